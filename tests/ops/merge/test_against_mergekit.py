"""`surgeon merge` against mergekit 0.1.5's own outputs (tests/data/mergekit, made by its make.py with
mergekit-yaml on a tiny float32 Llama and three sparse fine-tunes): every deterministic method, the six new
ones included, equals mergekit's tensors bit for bit or within 1e-6 of the largest entry."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from builders import write_checkpoint
from helpers import run_json
from safetensors.torch import load_file

DATA = Path(__file__).resolve().parents[2] / "data" / "mergekit"
CASES = json.loads((DATA / "outputs.json").read_text())["cases"]

# bit for bit where our arithmetic is mergekit's operation for operation; otherwise the reductions (norms,
# sums over the whole tensor) run in another order, chunk by chunk
EXACT = {"ram", "ramplus_tl", "arcee_fusion", "linear", "ties"}


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    return {
        k: torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.float32).reshape(shape)
        for k, (shape, b64) in packed.items()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    data = json.loads((DATA / "inputs.json").read_text())
    root = tmp_path_factory.mktemp("mergekit-inputs")
    return {n: write_checkpoint(root / n, unpack(sd), data["config"]) for n, sd in data["models"].items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_mergekit(capsys, tmp_path, inputs, case):
    recipe = CASES[case]["recipe"]
    for n, p in inputs.items():
        recipe = recipe.replace(f"'{{{n}}}'", str(p))
    (tmp_path / "r.yml").write_text(recipe)
    run_json(capsys, "merge", str(tmp_path / "r.yml"), "-o", str(tmp_path / "out"), "-q", "--device", "cpu")
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    theirs = unpack(CASES[case]["tensors"])
    assert set(ours) == set(theirs)
    for k, want in theirs.items():
        got = ours[k]
        assert got.dtype == torch.float32 and got.shape == want.shape, k
        if case in EXACT:
            assert torch.equal(got, want), (k, float((got - want).abs().max()))
        else:
            rel = float((got.double() - want.double()).abs().max() / want.double().abs().max())
            assert rel <= 1e-6, (k, rel)


def test_union_tokenizer_tokens_and_chat_template_equal_mergekit(capsys, tmp_path):
    """tokenizer source union with tokens: overrides (source, model_token by text and by id, zero, force) and
    the chatml template: the same vocabulary, special tokens and template as mergekit's, and every token's
    embedding and output rows equal to mergekit's rows for that token (new tokens' ids follow a hash map's
    order in mergekit, so rows are matched by token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = json.loads((DATA / "union.json").read_text())
    recipe = data["recipe"]
    for n, spec in data["inputs"].items():
        folder = tmp_path / f"tok-{n}"
        write_checkpoint(folder, unpack(spec["tensors"]))
        for fname, text in spec["files"].items():
            (folder / fname).write_text(text)
        recipe = recipe.replace(f"'{{{n}}}'", str(folder))
    (tmp_path / "r.yml").write_text(recipe)
    out = tmp_path / "out"
    run_json(capsys, "merge", str(tmp_path / "r.yml"), "-o", str(out), "-q")
    tok = AutoTokenizer.from_pretrained(out)
    vocab, theirs_vocab = tok.get_vocab(), data["vocab"]
    assert set(vocab) == set(theirs_vocab)
    assert sorted(t.content for t in tok.added_tokens_decoder.values() if t.special) == data["special_added"]
    conv = data["conversations"][1]
    assert tok.apply_chat_template(conv, tokenize=False) == data["renders"]["chatml/1/False"]
    ours, theirs = load_file(str(out / "model.safetensors")), unpack(data["tensors"])
    assert set(ours) == set(theirs)
    for k, want in theirs.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert ours[k].shape == want.shape, k
            for t, i in theirs_vocab.items():
                assert torch.allclose(ours[k][vocab[t]], want[i], rtol=0, atol=1e-6), (k, t)
        else:
            assert torch.equal(ours[k], want), k
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("hello <|im_start|> fox", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape == (1, ids.shape[1] + 2)


def test_named_chat_templates_render_as_mergekits():
    """Each template mergekit ships renders the same text for the same conversations (errors included), but
    EXAONE: mergekit's exaone.jinja is indented, and without Jinja's whitespace control the indentation lands
    in the prompt ('        [|system|]...'); ours renders the format EXAONE's own template writes, which is
    mergekit's text without that whitespace."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from modelsurgeon.recipes.merge import chat_template_text

    data = json.loads((DATA / "union.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<s>", eos_token="</s>")
    for key, theirs in data["renders"].items():
        name, i, gp = key.split("/")
        try:
            ours = tok.apply_chat_template(
                data["conversations"][int(i)],
                chat_template=chat_template_text(name),
                tokenize=False,
                add_generation_prompt=gp == "True",
            )
        except Exception as e:
            ours = f"error: {type(e).__name__}"
        if name == "exaone":
            assert "".join(ours.split()) == "".join(theirs.split()) and not ours.startswith(" "), key
        else:
            assert ours == theirs, key


def test_moe_with_cheap_embed_routers_equals_mergekit_moe(capsys, tmp_path):
    """mergekit-moe's Mixtral (transformers 5's fused expert layout) and ours (the per-expert layout) load in
    transformers as the same model: experts, attention and cheap_embed routers equal, logits equal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    union, data = (json.loads((DATA / f).read_text()) for f in ("union.json", "moe.json"))
    a = union["inputs"]["a"]
    base = write_checkpoint(tmp_path / "base", unpack(a["tensors"]))
    for fname, text in a["files"].items():
        (base / fname).write_text(text)
    recipe = data["recipe"].replace("'{base}'", str(base))
    for name, mlp in data["experts"].items():
        folder = write_checkpoint(tmp_path / name, unpack(a["tensors"]) | unpack(mlp))
        for fname, text in a["files"].items():
            (folder / fname).write_text(text)
        recipe = recipe.replace(f"'{{{name}}}'", str(folder))
    (tmp_path / "moe.yml").write_text(recipe)
    run_json(capsys, "merge", str(tmp_path / "moe.yml"), "-o", str(tmp_path / "ours"), "-q")
    theirs_dir = write_checkpoint(tmp_path / "theirs", unpack(data["tensors"]), data["config"])
    for fname, text in a["files"].items():
        if fname != "config.json":
            (theirs_dir / fname).write_text(text)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    theirs = AutoModelForCausalLM.from_pretrained(theirs_dir)
    so, st = ours.state_dict(), theirs.state_dict()
    assert set(so) == set(st)
    for k, want in st.items():
        assert torch.allclose(so[k], want, rtol=0, atol=1e-6 if ".gate." in k else 0), k
    tok = AutoTokenizer.from_pretrained(tmp_path / "ours")
    ids = tok("the quick brown fox jumps", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-5)
