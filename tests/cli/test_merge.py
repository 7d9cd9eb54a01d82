"""`surgeon merge` end to end: recipes and flags on tiny Llamas and MiniLM, outputs that load, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import make_tiny_llama
from helpers import assert_one_line_error, run, run_json
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modelsurgeon.ops.merge.methods import MergeInputs, get_method


def perturb(src: Path, dst: Path, seed: int, scale: float = 0.02, dtype: torch.dtype | None = None, names=None) -> Path:
    """A 'fine-tune' of src: every float tensor (or those in ``names``) plus small noise, other files copied."""
    shutil.copytree(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if v.is_floating_point():
            if names is None or k in names:
                v = v.float() + scale * torch.randn(v.shape, generator=g)
            sd[k] = v.to(dtype or v.dtype)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamas")
    base = make_tiny_llama(root / "base", seed=0)
    return {"base": base, "a": perturb(base, root / "a", 1), "b": perturb(base, root / "b", 2), "root": root}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def method_out(method, base, xs, params, mps, name="w", seed=0):
    from modelsurgeon.ops.merge.run import tensor_seed

    m = get_method(method)
    p = {x.name: x.default for x in m.params} | params
    mps = [{x.name: x.default for x in m.model_params} | mp for mp in mps]
    gen = lambda i, block=0: torch.Generator().manual_seed(tensor_seed(seed, name, i, block))  # noqa: E731
    return m.fn(MergeInputs(name, list(xs), base, p, mps, generator=gen))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def nothing_written(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.tmp") for p in out.parent.iterdir())


# --- recipes on tiny Llamas


def test_ties_recipe_with_gradients_loads_and_matches_the_method(capsys, llamas, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = write(
        tmp_path / "ties.yml",
        f"""\
merge_method: ties
base_model: {llamas["base"]}
models:
  - model: {llamas["a"]}
    parameters: {{weight: 0.7, density: [1, 0.5]}}
  - model: {llamas["b"]}
    parameters:
      weight: [{{filter: self_attn, value: 0.2}}, {{value: 0.6}}]
      density: 0.4
""",
    )
    out = tmp_path / "out"
    r = run_json(capsys, "merge", recipe, "-o", out, "-q")
    assert r["method"] == "ties" and r["merged_tensors"] == 21 and r["output"] == str(out)
    got, b, a, bb = tensors(out), tensors(llamas["base"]), tensors(llamas["a"]), tensors(llamas["b"])
    # layer 1 of 2 sits at t = 1: a's density is 0.5 there; lm_head sits at t = 0: density 1
    for name, wa, da, wb in [
        ("model.layers.1.self_attn.q_proj.weight", 0.7, 0.5, 0.2),
        ("model.layers.0.mlp.up_proj.weight", 0.7, 1.0, 0.6),
        ("lm_head.weight", 0.7, 1.0, 0.6),
    ]:
        want = method_out(
            "ties", b[name], [a[name], bb[name]], {}, [{"weight": wa, "density": da}, {"weight": wb, "density": 0.4}]
        )
        assert torch.equal(got[name], want), name
    assert (out / "mergekit_config.yml").read_text() == recipe.read_text()
    assert "base_model:" in (out / "README.md").read_text()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["merge_method"] == "ties" and meta["merge_seed"] == "0" and "modelsurgeon_command" in meta
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_passthrough_slices_stack_layers(capsys, llamas, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = write(
        tmp_path / "stack.yml",
        f"""\
merge_method: passthrough
slices:
  - sources:
      - {{model: {llamas["a"]}, layer_range: [0, 2]}}
  - sources:
      - {{model: {llamas["b"]}, layer_range: [1, 2]}}
""",
    )
    out = tmp_path / "stack"
    r = run_json(capsys, "merge", recipe, "-o", out, "-q")
    assert r["tensors"] == 3 + 9 * 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    got, a, b = tensors(out), tensors(llamas["a"]), tensors(llamas["b"])
    assert torch.equal(got["model.layers.2.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])  # post-weights come from the last slice
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 3


def test_slerp_slices_with_filtered_gradients(capsys, llamas, tmp_path):
    recipe = write(
        tmp_path / "slerp.yml",
        f"""\
merge_method: slerp
base_model: {llamas["base"]}
slices:
  - sources:
      - {{model: {llamas["base"]}, layer_range: [0, 2]}}
      - {{model: {llamas["a"]}, layer_range: [0, 2]}}
parameters:
  t:
    - filter: self_attn
      value: [0, 1]
    - value: 0.25
dtype: float32
""",
    )
    out = tmp_path / "slerp"
    run_json(capsys, "merge", recipe, "-o", out, "-q")
    got, b, a = tensors(out), tensors(llamas["base"]), tensors(llamas["a"])
    assert torch.equal(got["model.layers.0.self_attn.k_proj.weight"], b["model.layers.0.self_attn.k_proj.weight"])  # t = 0
    assert torch.allclose(got["model.layers.1.self_attn.k_proj.weight"], a["model.layers.1.self_attn.k_proj.weight"], atol=1e-6)
    n = "model.layers.1.mlp.down_proj.weight"
    # (float32 reductions for the angle may differ in the last bit with the number of threads)
    assert torch.allclose(got[n], method_out("slerp", b[n], [a[n]], {"t": 0.25}, []), rtol=0, atol=1e-7)


def test_flags_form_writes_an_equivalent_recipe(capsys, llamas, tmp_path):
    out = tmp_path / "flags"
    args = [
        "merge",
        "--method",
        "dare_ties",
        "--base",
        llamas["base"],
        llamas["a"],
        llamas["b"],
        "--weight",
        "0.6",
        "--weight",
        "0.4",
        "--density",
        "0.5",
        "--param",
        "lambda=0.9",
        "--seed",
        "3",
        "-q",
    ]
    run_json(capsys, *args, "-o", out)
    out2 = tmp_path / "from-recipe"
    run_json(capsys, "merge", out / "mergekit_config.yml", "-o", out2, "--seed", "3", "-q")
    t1, t2 = tensors(out), tensors(out2)
    assert all(torch.equal(t1[k], t2[k]) for k in t1)


def test_random_methods_are_reproducible_and_order_independent(capsys, llamas, tmp_path):
    def dare(seed, *models, out):
        run_json(
            capsys,
            "merge",
            "--method",
            "dare_ties",
            "--base",
            llamas["base"],
            *models,
            "--density",
            "0.3",
            "--seed",
            seed,
            "-o",
            out,
            "-q",
        )
        return tensors(out)

    first = dare(5, llamas["a"], llamas["b"], out=tmp_path / "r1")
    again = dare(5, llamas["a"], llamas["b"], out=tmp_path / "r2")
    other = dare(6, llamas["a"], llamas["b"], out=tmp_path / "r3")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # the same tensors stored in another order give the same merge: randomness follows names, not order
    shuffled = {}
    for m in ("base", "a", "b"):
        dst = tmp_path / f"shuf-{m}"
        shutil.copytree(llamas[m], dst)
        sd = load_file(str(dst / "model.safetensors"))
        (dst / "model.safetensors").unlink()
        names = sorted(sd, reverse=True)
        save_file({n: sd[n] for n in names[:10]}, str(dst / "model-00001-of-00002.safetensors"))
        save_file({n: sd[n] for n in names[10:]}, str(dst / "model-00002-of-00002.safetensors"))
        index = {
            "metadata": {},
            "weight_map": {n: f"model-0000{1 if i < 10 else 2}-of-00002.safetensors" for i, n in enumerate(names)},
        }
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
        shuffled[m] = dst
    run_json(
        capsys,
        "merge",
        "--method",
        "dare_ties",
        "--base",
        shuffled["base"],
        shuffled["a"],
        shuffled["b"],
        "--density",
        "0.3",
        "--seed",
        "5",
        "-o",
        tmp_path / "r4",
        "-q",
    )
    moved = tensors(tmp_path / "r4")
    assert all(torch.equal(first[k], moved[k]) for k in first)


def test_dtypes_follow_the_sources_unless_told(capsys, llamas, tmp_path):
    root = tmp_path
    base = perturb(llamas["base"], root / "bf-base", 3, 0.0, torch.bfloat16)
    a = perturb(llamas["base"], root / "bf-a", 4, 0.02, torch.bfloat16)
    r = run_json(capsys, "merge", "--method", "task_arithmetic", "--base", base, a, "-o", root / "bf", "-q")
    assert r["dtypes"] == {"BF16": 106816}
    r = run_json(
        capsys, "merge", "--method", "task_arithmetic", "--base", base, a, "--out-dtype", "float16", "-o", root / "f16", "-q"
    )
    assert r["dtypes"] == {"F16": 106816}
    assert json.loads((root / "f16" / "config.json").read_text())["dtype"] == "float16"


def test_sharded_output_loads(capsys, llamas, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    r = run_json(capsys, "merge", "--method", "linear", llamas["a"], llamas["b"], "--max-shard-size", "100KB", "-o", out, "-q")
    assert len([f for f in r["files"] if f.endswith(".safetensors")]) > 2 and "model.safetensors.index.json" in r["files"]
    AutoModelForCausalLM.from_pretrained(out)


def test_vocab_alignment_by_token(capsys, tmp_path):
    """A model with a reordered, larger vocabulary merges row by token with tokenizer_source: base."""
    base = make_tiny_llama(tmp_path / "vbase", seed=0)
    big = make_tiny_llama(tmp_path / "vbig", seed=1, vocab_size=260)
    base_vocab = {f"tok{i}": i for i in range(256)}
    perm = list(range(256))[::-1]  # big stores token i at row 255 - i, plus 4 tokens of its own
    big_vocab = {f"tok{i}": perm[i] for i in range(200)} | {f"new{j}": 256 + j for j in range(4)}  # lacks tok200..255
    for folder, vocab in ((base, base_vocab), (big, big_vocab)):
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": vocab}, "added_tokens": []}))
    out = tmp_path / "aligned"
    code, _, err = run(capsys, "merge", "--method", "linear", base, big, "-o", out, "-q")
    assert code == 1 and "vocabularies differ in size" in err and nothing_written(out)
    run_json(capsys, "merge", "--method", "linear", "--base", base, base, big, "--tokenizer-source", "base", "-o", out, "-q")
    got, tb, tg = tensors(out), tensors(base), tensors(big)
    emb = "model.embed_tokens.weight"
    assert got[emb].shape == (256, 64)
    assert torch.allclose(got[emb][10], (tb[emb][10] + tg[emb][245]) / 2)  # tok10 lives at row 245 in big
    assert torch.equal(got[emb][230], tb[emb][230])  # big lacks tok230: it contributes the base's row
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 256


# --- MiniLM, the real checkpoint


def test_minilm_task_arithmetic_with_perturbed_copies(capsys, minilm_dir, tmp_path):
    from transformers import AutoModel

    a = perturb(minilm_dir, tmp_path / "ft-a", 1, 0.01)
    b = perturb(minilm_dir, tmp_path / "ft-b", 2, 0.01)
    out = tmp_path / "minilm-merged"
    r = run_json(capsys, "merge", "--method", "ties", "--base", minilm_dir, a, b, "--density", "0.5", "-o", out, "-q")
    assert r["copied_tensors"] == 1 and r["merged_tensors"] == 103  # int64 position_ids pass through
    got, base = tensors(out), tensors(minilm_dir)
    assert torch.equal(got["embeddings.position_ids"], base["embeddings.position_ids"])
    assert (out / "vocab.txt").is_file() and (out / "1_Pooling" / "config.json").is_file()
    model = AutoModel.from_pretrained(out)
    y = model(input_ids=torch.tensor([[101, 2023, 102]])).last_hidden_state
    assert torch.isfinite(y).all()


# --- inspection


def test_dry_run_writes_nothing(capsys, llamas, tmp_path):
    out = tmp_path / "dry"
    r = run_json(capsys, "merge", "--method", "ties", "--base", llamas["base"], llamas["a"], llamas["b"], "-o", out, "--dry-run")
    assert r["dry_run"] and r["merged_tensors"] == 21 and r["peak_memory_estimate"] > 0
    assert nothing_written(out)


def test_list_methods(capsys):
    r = run_json(capsys, "merge", "--list-methods")
    names = [m["name"] for m in r["methods"]]
    assert {"ties", "dare_ties", "della", "slerp", "model_stock", "pcb", "passthrough"} <= set(names)
    ties = next(m for m in r["methods"] if m["name"] == "ties")
    assert ties["parameters"]["normalize"] is True and ties["model_parameters"] == {"weight": None, "density": 1.0}


# --- bad input: one line (or one block listing every problem), exit 1 or 2, nothing written


def _bad_recipes(llamas, tmp_path) -> dict[str, tuple[str, int, list[str]]]:
    b, a, bb = llamas["base"], llamas["a"], llamas["b"]
    wide = llamas["root"] / "wide"
    if not wide.exists():
        make_tiny_llama(wide, seed=3, intermediate_size=96)
    return {
        "unknown-method": (
            f"merge_method: dare-ties\nbase_model: {b}\nmodels: [{a}]\n",
            1,
            ["unknown merge method 'dare-ties'", "did you mean dare_ties", "known merge methods: linear"],
        ),
        "no-base": (
            f"merge_method: ties\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n",
            1,
            ["ties needs a base model"],
        ),
        "shape": (
            f"merge_method: task_arithmetic\nbase_model: {b}\nmodels:\n  - model: {wide}\n    parameters: {{weight: 1}}\n",
            1,
            [f"{wide} has shape [96, 64] but {b} has [128, 64]", "model.layers.0.mlp.gate_proj.weight"],
        ),
        "zero-weights": (
            f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n  - model: {bb}\n    parameters: {{weight: -1}}\n",
            1,
            ["sum to zero and normalize is on"],
        ),
        "density": (
            f"merge_method: ties\nbase_model: {b}\nmodels:\n  - model: {a}\n    parameters: {{weight: 1, density: 1.5}}\n",
            1,
            ["line 5, column ", "density 1.5 is outside (0, 1]"],
        ),
        "invalid-yaml": (
            "merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1\n",
            1,
            ["is not valid YAML at line 5, column 1"],
        ),
        "missing-model": (
            f"merge_method: ties\nbase_model: {b}\nmodels:\n  - model: {tmp_path / 'nope'}\n",
            1,
            ["no such file or folder"],
        ),
    }


@pytest.mark.parametrize(
    "case", ["unknown-method", "no-base", "shape", "zero-weights", "density", "invalid-yaml", "missing-model"]
)
def test_bad_recipes(capsys, llamas, tmp_path, case):
    text, code_expected, needles = _bad_recipes(llamas, tmp_path)[case]
    recipe = write(tmp_path / f"{case}.yml", text)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "merge", recipe, "-o", out)
    assert code == code_expected, err
    assert "Traceback" not in err and stdout == ""
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, (n, err)
    assert nothing_written(out)


def test_missing_tensor_names_both(capsys, llamas, tmp_path):
    lacking = tmp_path / "lacking"
    shutil.copytree(llamas["a"], lacking)
    sd = load_file(str(lacking / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(lacking / "model.safetensors"))
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "merge", "--method", "ties", "--base", llamas["base"], lacking, llamas["b"], "-o", out)
    assert code == 1 and stdout == "" and nothing_written(out)
    assert f"model.layers.1.mlp.up_proj.weight: {lacking} has no tensor model.layers.1.mlp.up_proj.weight" in err


def test_all_problems_in_one_block(capsys, llamas, tmp_path):
    wide = llamas["root"] / "wide"
    if not wide.exists():
        make_tiny_llama(wide, seed=3, intermediate_size=96)
    recipe = write(
        tmp_path / "many.yml",
        f"""\
merge_method: della
base_model: {llamas["base"]}
models:
  - model: {llamas["a"]}
    parameters: {{density: 0.1, epsilon: 0.2}}
  - model: {llamas["b"]}
    parameters: {{desnity: 0.5}}
  - model: {wide}
parameters: {{weight: 1}}
""",
    )
    code, stdout, err = run(capsys, "merge", recipe, "-o", tmp_path / "out")
    assert code == 1 and stdout == ""
    lines = err.strip().splitlines()
    assert lines[0] == "error: 4 problems with the merge, nothing was written:"
    assert "line 7, column " in lines[1] and "unknown parameter 'desnity'; della takes density, epsilon" in lines[1]
    assert "did you mean density?" in lines[1]
    assert "has shape [96, 64]" in err and "has shape [64, 96]" in err
    assert f"{llamas['a']}: density 0.1 +/- epsilon 0.2 must stay inside (0, 1) (in 21 tensors" in err
    assert nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["merge", "r.yml", "--method", "ties", "-o", "x"], 2, "give a recipe file or --method, not both"),
        (["merge", "-o", "x"], 2, "give a recipe file or --method with models"),
        (["merge", "a", "b", "-o", "x"], 2, "a is not a recipe (.yaml) and no --method was given"),
        (["merge", "--method", "tie", "a", "-o", "x"], 2, "unknown merge method 'tie': did you mean ties?"),
        (["merge", "--method", "ties", "a"], 2, "-o/--output is required"),
        (["merge", "r.yml", "--density", "0.5", "-o", "x"], 2, "--density belongs to the --method form"),
        (
            ["merge", "--method", "ties", "--base", "b", "a", "c", "--weight", "1", "--weight", "2", "--weight", "3", "-o", "x"],
            2,
            "--weight was given 3 times for 2 model(s)",
        ),
        (["merge", "--method", "ties", "a", "--dtype", "int3", "-o", "x"], 2, "--dtype 'int3' is not a dtype"),
        (["merge", "--extract-lora", "ft", "--base", "b", "-o", "x"], 2, "--extract-lora needs --rank"),
        (["merge", "--lora", "ad", "-o", "x"], 2, "--lora needs --base"),
        (["merge", "--method", "ties", "a", "--param", "lambda", "-o", "x"], 2, "--param 'lambda' is not KEY=VALUE"),
    ],
)
def test_bad_usage(capsys, args, code, needle):
    c, out, err = run(capsys, *args)
    assert_one_line_error(c, out, err, code, needle)


# --- the method is looked up in the registry before any model is opened


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """No network and an empty Hugging Face cache: opening any Hub id fails with a cache miss."""
    import huggingface_hub.constants as c

    (tmp_path / "hub").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_misspelt_method_flag_fails_before_any_model_is_opened(capsys, tmp_path, offline_empty_hub):
    c, o, err = run(capsys, "merge", "--method", "tiess", "--base", "org/a", "org/b", "-o", tmp_path / "out")
    assert_one_line_error(c, o, err, 2, "unknown merge method 'tiess'", "did you mean ties?")
    assert "cache" not in err and nothing_written(tmp_path / "out")


def test_misspelt_method_in_a_recipe_fails_before_any_model_is_opened(capsys, tmp_path, offline_empty_hub):
    recipe = write(tmp_path / "r.yml", "merge_method: tiess\nbase_model: org/a\nmodels:\n  - model: org/b\n")
    c, o, err = run(capsys, "merge", recipe, "-o", tmp_path / "out")
    assert_one_line_error(c, o, err, 1, "unknown merge method 'tiess'", "did you mean ties?")
    assert "cache" not in err and nothing_written(tmp_path / "out")


def test_a_known_method_reaches_the_models(capsys, tmp_path, offline_empty_hub):
    """(The control: with the method spelt right, the same command gets as far as the empty cache.)"""
    c, o, err = run(capsys, "merge", "--method", "ties", "--base", "org/a", "org/b", "-o", tmp_path / "out")
    assert c == 1 and "org/a is not in the local Hugging Face cache" in err


def test_existing_output_refused_before_any_work(capsys, llamas, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    c, o, err = run(capsys, "merge", "--method", "linear", llamas["a"], llamas["b"], "-o", out)
    assert_one_line_error(c, o, err, 1, "already exists", "--force")
    run_json(capsys, "merge", "--method", "linear", llamas["a"], llamas["b"], "-o", out, "--force", "-q")
    assert (out / "model.safetensors").is_file()


@pytest.mark.gpu
def test_cuda_gives_the_cpu_result(capsys, llamas, tmp_path):
    for method in ("ties", "dare_ties"):
        outs = []
        for dev in ("cpu", "cuda"):
            out = tmp_path / f"{method}-{dev}"
            run_json(
                capsys,
                "merge",
                "--method",
                method,
                "--base",
                llamas["base"],
                llamas["a"],
                llamas["b"],
                "--density",
                "0.4",
                "--device",
                dev,
                "-o",
                out,
                "-q",
            )
            outs.append(tensors(out))
        for k in outs[0]:
            assert torch.allclose(outs[0][k], outs[1][k], atol=1e-6), (method, k)
