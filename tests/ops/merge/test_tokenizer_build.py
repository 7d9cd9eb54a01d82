"""tokenizer_source: union, tokenizer.tokens and named chat templates: the merged tokenizer loads in
transformers and every token's embedding row follows mergekit's rules (test_against_mergekit.py compares a
recipe like this one with mergekit 0.1.5's own output: same vocabulary, special tokens and rows by token)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import make_llama_with_own_tokenizer
from helpers import run, run_json
from safetensors.torch import load_file

A_TEXT = "the quick brown fox jumps over the lazy dog " * 30
B_TEXT = "hello world, merging tokenizers is a union of vocabularies " * 30


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toks")
    return {
        "a": make_llama_with_own_tokenizer(root / "ta", A_TEXT, 0),
        "b": make_llama_with_own_tokenizer(root / "tb", B_TEXT, 1, extra=["<|im_start|>", "<|im_end|>"]),
        "c": make_llama_with_own_tokenizer(root / "tc", B_TEXT, 2, eos="<|im_end|>", extra=["<|im_end|>"]),
    }


def recipe(a: Path, b: Path, chat: str = "chatml") -> str:
    return f"""merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.6}}
  - model: {b}
    parameters: {{weight: 0.4}}
tokenizer:
  source: union
  tokens:
    <|im_start|>:
      source: {b}
    <|im_end|>:
      source: {{kind: model_token, model: {a}, token: </s>}}
      force: true
    <s>:
      source: {{kind: zero}}
      force: true
    <new>:
      source: {{kind: model_token, model: {b}, token_id: 5}}
chat_template: {chat}
"""


def expected_row(tok: str, own: dict[str, torch.Tensor], vocab: dict[str, dict[str, int]], model: str) -> torch.Tensor:
    """mergekit's rule for one model's row of one output token (a transcription of PermutedVocabulary)."""
    forced = {"<|im_end|>": own["a"][vocab["a"]["</s>"]], "<s>": torch.zeros(32)}
    if tok in forced:
        return forced[tok]
    if tok in vocab[model]:
        return own[model][vocab[model][tok]]
    if tok == "<|im_start|>":
        return own["b"][vocab["b"][tok]]
    if tok == "<new>":
        return own["b"][5]
    holders = [m for m in ("a", "b") if tok in vocab[m]]
    assert len(holders) == 1, tok  # every other token is in one model only here
    return own[holders[0]][vocab[holders[0]][tok]]


def test_union_tokens_and_named_chat_template(capsys, toks, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "union.yml"
    path.write_text(recipe(toks["a"], toks["b"]))
    out = tmp_path / "merged"
    run_json(capsys, "merge", str(path), "-o", str(out), "-q")
    tok = AutoTokenizer.from_pretrained(out)
    va, vb = (AutoTokenizer.from_pretrained(toks[m]).get_vocab() for m in "ab")
    vocab = tok.get_vocab()
    assert set(vocab) == set(va) | set(vb) | {"<new>"}
    assert {t.content for t in tok.added_tokens_decoder.values() if t.special} >= {"<|im_start|>", "<|im_end|>", "<s>", "</s>"}
    assert all(vocab[t] == i for t, i in va.items())  # the base's (first model's) ids are kept
    conv = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == len(vocab)
    got = load_file(str(out / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        own = {m: load_file(str(toks[m] / "model.safetensors"))[name] for m in "ab"}
        assert got[name].shape == (len(vocab), 32)
        for t, i in vocab.items():
            want = 0.6 * expected_row(t, own, {"a": va, "b": vb}, "a") + 0.4 * expected_row(t, own, {"a": va, "b": vb}, "b")
            assert torch.allclose(got[name][i], want, atol=1e-6), (name, t)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("hello <|im_start|> fox", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)
    # the new tokens' ids are reproducible (mergekit's follow a hash map's order, different each run)
    again = tmp_path / "again"
    run_json(capsys, "merge", str(path), "-o", str(again), "-q")
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_pad_to_multiple_of_gives_padding_rows_the_mean(capsys, toks, tmp_path):
    path = tmp_path / "pad.yml"
    path.write_text(
        f"merge_method: linear\nbase_model: {toks['a']}\nmodels:\n  - model: {toks['a']}\n    parameters: {{weight: 1.0}}\n"
        "tokenizer:\n  source: base\n  pad_to_multiple_of: 64\n"
    )
    out = tmp_path / "padded"
    run_json(capsys, "merge", str(path), "-o", str(out), "-q")
    got = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    n = len(json.loads((toks["a"] / "tokenizer.json").read_text())["model"]["vocab"])
    assert got.shape[0] == 256 and got.shape[0] % 64 == 0
    assert torch.allclose(got[n:], got[:n].mean(0).expand(256 - n, -1), atol=1e-6)


def test_bad_tokenizer_and_template_input_all_at_once(capsys, toks, tmp_path):
    """Sources that disagree on special tokens are named; an unknown template lists the known ones."""
    path = tmp_path / "bad.yml"
    path.write_text(recipe(toks["a"], toks["c"], chat="chatmlx"))
    out = tmp_path / "never"
    code, stdout, err = run(capsys, "merge", str(path), "-o", str(out))
    assert code == 1 and stdout == "" and not out.exists()
    assert "unknown chat template 'chatmlx'" in err and "alpaca, chatml, exaone, llama3, mistral" in err
    # the template is refused while reading the recipe; with a valid one the tokenizers are checked
    path.write_text(recipe(toks["a"], toks["c"]))
    code, stdout, err = run(capsys, "merge", str(path), "-o", str(out))
    assert code == 1 and stdout == "" and "Traceback" not in err and not out.exists()
    assert "2 problems with the merge, nothing was written" in err
    assert "disagree on special tokens: eos_token is '</s>' in" in err and "'<|im_end|>' in" in err
    assert "source " in err and "has no token '<|im_start|>'" in err
