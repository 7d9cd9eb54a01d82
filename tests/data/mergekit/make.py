"""Regenerate the mergekit fixtures: a tiny float32 Llama base and three sparse fine-tunes of it, and what
mergekit-yaml makes of them for each recipe in RECIPES, stored as JSON (float32 bytes, base64) so the tests
compare `surgeon merge` with mergekit's own output without mergekit installed.

    python3 -m venv /tmp/venv-mergekit && /tmp/venv-mergekit/bin/pip install torch==2.13.0 mergekit==0.1.5
    /tmp/venv-mergekit/bin/python tests/data/mergekit/make.py

The tests (tests/ops/merge/test_against_mergekit.py) rebuild the input folders from inputs.json and run the
same recipes. union.json holds two tiny Llamas with their own byte-level BPE tokenizers (and the files those
tokenizers are), a recipe with `tokenizer: {source: union, tokens: ...}` and `chat_template: chatml`, and
mergekit's merged vocabulary, chat template and tensors. moe.json: mergekit-moe's Mixtral from that model a
and three experts (their MLP tensors stored) with cheap_embed routers. modules.json: a `modules:` recipe
(MODULES_RECIPE) and a `models:` recipe with layer gradients (MODULES_MODELS_RECIPE) on a tiny Mistral3
and a tiny Qwen2.5-VL (base and two fine-tunes each) and mergekit's outputs (`--modules-only` remakes just that file). Made with mergekit 0.1.5, transformers 5.24.0, torch 2.13.0 (CPU)."""

from __future__ import annotations

import base64
import importlib.metadata as md
import json
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

CONFIG = dict(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
)

# {base}, {a}, {b}, {c} name the input folders
RECIPES = {
    "multislerp": "merge_method: multislerp\nmodels:\n  - {model: '{a}', parameters: {weight: 0.5}}\n"
    "  - {model: '{b}', parameters: {weight: 0.3}}\n  - {model: '{c}', parameters: {weight: 0.2}}\n",
    "multislerp_base": "merge_method: multislerp\nbase_model: '{base}'\nmodels:\n  - {model: '{a}', parameters: {weight: 0.5}}\n"
    "  - {model: '{b}', parameters: {weight: 0.3}}\n  - {model: '{c}', parameters: {weight: 0.2}}\n",
    "karcher": "merge_method: karcher\nparameters: {max_iter: 10, tol: 1.0e-5}\nmodels:\n  - model: '{a}'\n  - model: '{b}'\n  - model: '{c}'\n",
    "karcher_base": "merge_method: karcher\nbase_model: '{base}'\nmodels:\n  - model: '{a}'\n  - model: '{b}'\n",
    "sce": "merge_method: sce\nbase_model: '{base}'\nmodels:\n  - model: '{a}'\n  - model: '{b}'\n  - model: '{c}'\n",
    "sce_topk": "merge_method: sce\nbase_model: '{base}'\nparameters: {select_topk: 0.5}\n"
    "models:\n  - model: '{a}'\n  - model: '{b}'\n  - model: '{c}'\n",
    "ram": "merge_method: ram\nbase_model: '{base}'\nmodels:\n  - model: '{a}'\n  - model: '{b}'\n  - model: '{c}'\n",
    "ramplus_tl": "merge_method: ramplus_tl\nbase_model: '{base}'\nparameters: {r: 0.5, alpha: 0.4}\n"
    "models:\n  - model: '{a}'\n  - model: '{b}'\n  - model: '{c}'\n",
    "arcee_fusion": "merge_method: arcee_fusion\nbase_model: '{base}'\nmodels:\n  - model: '{a}'\n",
    "linear": "merge_method: linear\nmodels:\n  - {model: '{a}', parameters: {weight: 1.0}}\n"
    "  - {model: '{b}', parameters: {weight: 0.7}}\n  - {model: '{c}', parameters: {weight: 0.5}}\n",
    "ties": "merge_method: ties\nbase_model: '{base}'\nparameters: {density: 0.5}\nmodels:\n  - {model: '{a}', parameters: {weight: 1.0}}\n"
    "  - {model: '{b}', parameters: {weight: 0.7}}\n  - {model: '{c}', parameters: {weight: 0.5}}\n",
    "slerp": "merge_method: slerp\nbase_model: '{a}'\nparameters: {t: 0.3}\nmodels:\n  - model: '{a}'\n  - model: '{b}'\n",
    "nuslerp": "merge_method: nuslerp\nbase_model: '{base}'\nmodels:\n  - {model: '{a}', parameters: {weight: 0.6}}\n"
    "  - {model: '{b}', parameters: {weight: 0.4}}\n",
    "model_stock": "merge_method: model_stock\nbase_model: '{base}'\nmodels:\n  - model: '{a}'\n  - model: '{b}'\n  - model: '{c}'\n",
}


def pack(sd: dict[str, torch.Tensor]) -> dict:
    return {
        k: [list(v.shape), base64.b64encode(v.float().contiguous().numpy().tobytes()).decode()] for k, v in sorted(sd.items())
    }


def sparse_finetune(base: dict[str, torch.Tensor], seed: int, frac: float = 0.4) -> dict[str, torch.Tensor]:
    """base + noise on a random ``frac`` of the entries (so RAM and SCE see unique and shared changes)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < frac) for k, v in base.items()}


UNION_RECIPE = """merge_method: linear
models:
  - model: '{a}'
    parameters: {weight: 0.6}
  - model: '{b}'
    parameters: {weight: 0.4}
tokenizer:
  source: union
  tokens:
    <|im_start|>:
      source: '{b}'
    <|im_end|>:
      source: {kind: model_token, model: '{a}', token: </s>}
      force: true
    <s>:
      source: {kind: zero}
      force: true
    <new>:
      source: {kind: model_token, model: '{b}', token_id: 5}
chat_template: chatml
"""


TEMPLATES = ["alpaca", "chatml", "exaone", "llama3", "mistral"]
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sum 2+2"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
]


def tokenizer_model(folder: Path, text: str, seed: int, extra: list[str]) -> None:
    """A one-layer hidden-8 Llama whose embedding rows are its own BPE's (about 60 tokens, learnt on ``text``)."""
    from builders import make_tiny_llama
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = sorted({c for w in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text) for c in w[0]})
    tok.train_from_iterator(
        [text],
        trainers.BpeTrainer(vocab_size=len(alphabet) + 24, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet),
    )
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if extra:
        t.add_tokens([AddedToken(e, special=True) for e in extra], special_tokens=True)
    make_tiny_llama(
        folder,
        seed=seed,
        vocab_size=len(t),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    t.save_pretrained(folder)


def union_case(tmp: Path, mergekit_yaml: Path) -> dict:
    from transformers import AutoTokenizer

    inputs = {}
    for name, text, seed, extra in (
        ("a", "the quick brown fox jumps over the lazy dog " * 30, 0, []),
        ("b", "hello world, merging tokenizers is a union " * 30, 1, ["<|im_start|>", "<|im_end|>"]),
    ):
        folder = tmp / f"tok-{name}"
        tokenizer_model(folder, text, seed, extra)
        inputs[name] = {
            "files": {f.name: f.read_text() for f in folder.iterdir() if f.suffix in (".json", ".jinja")},
            "tensors": pack(load_file(str(folder / "model.safetensors"))),
        }
    recipe = UNION_RECIPE.replace("'{a}'", str(tmp / "tok-a")).replace("'{b}'", str(tmp / "tok-b"))
    (tmp / "union.yml").write_text(recipe)
    out = tmp / "out-union"
    subprocess.run([str(mergekit_yaml), str(tmp / "union.yml"), str(out), "--no-write-model-card"], check=True)
    sd = {}
    for f in sorted(out.glob("*.safetensors")):
        sd |= load_file(str(f))
    tok = AutoTokenizer.from_pretrained(out)
    renders = {}
    for name in TEMPLATES:
        template = (files("mergekit._data.chat_templates") / f"{name}.jinja").read_text()
        for i, conv in enumerate(CONVERSATIONS):
            for gp in (False, True):
                try:
                    text = tok.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=gp)
                except Exception as e:  # a template that refuses the conversation (say, a system turn)
                    text = f"error: {type(e).__name__}"
                renders[f"{name}/{i}/{gp}"] = text
    return {
        "recipe": UNION_RECIPE,
        "inputs": inputs,
        "vocab": tok.get_vocab(),
        "special_added": sorted(t.content for t in tok.added_tokens_decoder.values() if t.special),
        "chat_template": tok.chat_template,
        "conversations": CONVERSATIONS,
        "renders": renders,
        "tensors": pack(sd),
    }


MOE_RECIPE = """base_model: '{base}'
gate_mode: cheap_embed
dtype: float32
experts_per_token: 2
experts:
  - source_model: '{e1}'
    positive_prompts: ['the quick fox', 'the lazy dog']
    negative_prompts: ['over']
  - source_model: '{e2}'
    positive_prompts: ['jumps over']
  - source_model: '{e3}'
    positive_prompts: ['brown dog']
"""


def moe_case(tmp: Path) -> dict:
    """mergekit-moe with cheap_embed routers over the union case's model a and three experts (its MLPs plus
    noise)."""
    import shutil

    base_sd = load_file(str(tmp / "tok-a" / "model.safetensors"))
    recipe = MOE_RECIPE.replace("'{base}'", str(tmp / "tok-a"))
    experts = {}
    for i in (1, 2, 3):
        g = torch.Generator().manual_seed(100 + i)
        sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) if ".mlp." in k else v for k, v in base_sd.items()}
        folder = tmp / f"e{i}"
        shutil.copytree(tmp / "tok-a", folder)
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        experts[f"e{i}"] = pack({k: v for k, v in sd.items() if ".mlp." in k})
        recipe = recipe.replace(f"'{{e{i}}}'", str(folder))
    (tmp / "moe.yml").write_text(recipe)
    out = tmp / "out-moe"
    subprocess.run([str(Path(sys.executable).parent / "mergekit-moe"), str(tmp / "moe.yml"), str(out)], check=True)
    sd = {}
    for f in sorted(out.glob("*.safetensors")):
        sd |= load_file(str(f))
    return {
        "recipe": MOE_RECIPE,
        "experts": experts,
        "config": json.loads((out / "config.json").read_text()),
        "tensors": pack(sd),
    }


MODULES_RECIPE = """merge_method: ties
base_model: '{base}'
parameters: {density: 0.5, weight: 0.5}
modules:
  text_decoder:
    slices:
      - sources:
          - {model: '{a}', layer_range: [0, 2], parameters: {weight: [0.2, 0.8]}}
          - {model: '{b}', layer_range: [0, 2]}
          - {model: '{base}', layer_range: [0, 2]}
      - sources:
          - {model: '{a}', layer_range: [1, 2]}
          - {model: '{b}', layer_range: [1, 2], parameters: {density: 0.3}}
          - {model: '{base}', layer_range: [1, 2]}
  vision_tower:
    parameters: {density: 0.8}
    models:
      - model: '{a}'
        parameters: {weight: 0.9}
      - model: '{b}'
  multi_modal_projector:
    parameters: {weight: 0.1}
    models:
      - model: '{b}'
"""


# models: on a multi-module model: gradients run over each module's own layers (vision 3, text 2)
MODULES_MODELS_RECIPE = """merge_method: slerp
base_model: '{a}'
parameters:
  t:
    - {filter: merger, value: 0.5}
    - {filter: multi_modal_projector, value: 0.5}
    - {value: [0, 0.3, 1]}
models:
  - model: '{a}'
  - model: '{b}'
"""


def tiny_vlm(kind: str, folder: Path) -> None:
    """A tiny vision-language model as transformers saves it: Mistral3 (language_model., vision_tower.,
    multi_modal_projector.) or Qwen2.5-VL (model., visual. with the projector under visual.merger.)."""
    import transformers as T

    torch.manual_seed(0)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    if kind == "mistral3":
        cfg = T.Mistral3Config(
            text_config=dict(model_type="mistral", vocab_size=32, head_dim=8, **text),
            vision_config=dict(
                model_type="pixtral",
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=3,
                num_attention_heads=2,
                image_size=8,
                patch_size=2,
                head_dim=8,
            ),
            spatial_merge_size=2,
        )
        model = T.Mistral3ForConditionalGeneration(cfg)
    else:
        cfg = T.Qwen2_5_VLConfig(
            text_config=dict(vocab_size=32, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, **text),
            vision_config=dict(
                depth=3,
                hidden_size=16,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=16,
                patch_size=2,
                temporal_patch_size=1,
                spatial_merge_size=2,
                in_channels=3,
                fullatt_block_indexes=[2],
            ),
        )
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
    model.save_pretrained(folder)


def modules_case(tmp: Path, mergekit_yaml: Path) -> dict:
    """MODULES_RECIPE (TIES with per-module models, slices and parameters; the text decoder restacked to
    three layers) on two tiny VLMs, each a base and two dense fine-tunes of it."""
    cases = {}
    for kind in ("mistral3", "qwen2_5_vl"):
        root = tmp / kind
        tiny_vlm(kind, root / "base")
        base = load_file(str(root / "base" / "model.safetensors"))
        models = {"base": base}
        for i, n in enumerate("ab", 1):
            g = torch.Generator().manual_seed(i)
            models[n] = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
            (root / n).mkdir()
            save_file(models[n], str(root / n / "model.safetensors"), metadata={"format": "pt"})
            (root / n / "config.json").write_text((root / "base" / "config.json").read_text())
        outs = {}
        for name, recipe in (("modules", MODULES_RECIPE), ("models", MODULES_MODELS_RECIPE)):
            for n in models:
                recipe = recipe.replace(f"'{{{n}}}'", str(root / n))
            (root / f"{name}.yml").write_text(recipe)
            out = root / f"out-{name}"
            subprocess.run(
                [str(mergekit_yaml), str(root / f"{name}.yml"), str(out), "--no-copy-tokenizer", "--no-write-model-card"],
                check=True,
            )
            sd = {}
            for f in sorted(out.glob("*.safetensors")):
                sd |= load_file(str(f))
            outs[name] = (json.loads((out / "config.json").read_text()), pack(sd))
        cases[kind] = {
            "config": json.loads((root / "base" / "config.json").read_text()),
            "models": {n: pack(m) for n, m in models.items()},
            "out_config": outs["modules"][0],
            "tensors": outs["modules"][1],
            "models_tensors": outs["models"][1],
        }
    return {"recipe": MODULES_RECIPE, "models_recipe": MODULES_MODELS_RECIPE, "cases": cases}


def main() -> None:
    from builders import make_tiny_llama

    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    tmp = Path(tempfile.mkdtemp())
    meta = {"mergekit": md.version("mergekit"), "transformers": md.version("transformers"), "torch": torch.__version__}
    (HERE / "modules.json").write_text(json.dumps({"versions": meta} | modules_case(tmp, mergekit_yaml)) + "\n")
    if "--modules-only" in sys.argv:
        return
    make_tiny_llama(tmp / "base", seed=0, **CONFIG)
    base = load_file(str(tmp / "base" / "model.safetensors"))
    config = json.loads((tmp / "base" / "config.json").read_text())
    models = {"base": base} | {n: sparse_finetune(base, i) for i, n in enumerate("abc", 1)}
    for n, sd in models.items():
        (tmp / n).mkdir(exist_ok=True)
        save_file(sd, str(tmp / n / "model.safetensors"), metadata={"format": "pt"})
        (tmp / n / "config.json").write_text(json.dumps(config))
    if "--union-only" not in sys.argv:
        (HERE / "inputs.json").write_text(
            json.dumps({"config": config, "models": {n: pack(sd) for n, sd in models.items()}}) + "\n"
        )
    outputs = {}
    for case, recipe in RECIPES.items() if "--union-only" not in sys.argv else ():
        path = tmp / f"{case}.yml"
        path.write_text(
            recipe.replace("'{base}'", str(tmp / "base"))
            .replace("'{a}'", str(tmp / "a"))
            .replace("'{b}'", str(tmp / "b"))
            .replace("'{c}'", str(tmp / "c"))
        )
        out = tmp / f"out-{case}"
        subprocess.run([str(mergekit_yaml), str(path), str(out), "--no-copy-tokenizer", "--no-write-model-card"], check=True)
        sd = {}
        for f in sorted(out.glob("*.safetensors")):
            sd |= load_file(str(f))
        outputs[case] = {"recipe": recipe, "tensors": pack(sd)}
    meta = {"mergekit": md.version("mergekit"), "transformers": md.version("transformers"), "torch": torch.__version__}
    (HERE / "union.json").write_text(json.dumps({"versions": meta} | union_case(tmp, mergekit_yaml)) + "\n")
    (HERE / "moe.json").write_text(json.dumps({"versions": meta} | moe_case(tmp)) + "\n")
    if "--union-only" not in sys.argv:
        (HERE / "outputs.json").write_text(json.dumps({"versions": meta, "cases": outputs}) + "\n")


if __name__ == "__main__":
    main()
