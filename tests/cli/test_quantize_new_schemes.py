"""The FP8-block, FP4 and 2/3-bit schemes in a real consumer: a tiny bf16 Llama quantized to each loads in
transformers (compressed-tensors installed, on the CPU), and its logits equal our ``--format dense`` output's
exactly once the consumer's activation quantization is switched off (the weights are the same bits; the dense
output does not model activations). With activation quantization on, the schemes that quantize activations
(fp8-block: dynamic fp8 per group of 128; nvfp4, mxfp4: FP4) stay close: that rounding is the only difference."""

from __future__ import annotations

import pytest
import torch
from builders import make_tiny_llama
from helpers import assert_one_line_error, run

pytest.importorskip("compressed_tensors")

SCHEMES = ["fp8-block", "nvfp4a16", "nvfp4", "mxfp4", "w2a16", "w3a16"]
QUANTIZES_ACTIVATIONS = {"fp8-block", "nvfp4", "mxfp4"}


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("schemes")
    src = make_tiny_llama(root / "fp32", hidden_size=128, intermediate_size=256)
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(root / "bf16")
    return root / "bf16"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loads_in_transformers_with_dense_logits(capsys, tmp_path, bf16_llama, scheme):
    from transformers import AutoModelForCausalLM

    for fmt in ("compressed-tensors", "dense"):
        code, _, err = run(capsys, "quantize", bf16_llama, "-o", tmp_path / fmt, "--scheme", scheme, "--format", fmt, "-q")
        assert code == 0, err
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed-tensors")
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    with torch.no_grad():
        want = dense(ids).logits
        with_act = model(ids).logits
        for m in model.modules():
            if hasattr(m, "quantization_scheme"):
                m.quantization_enabled = False
        weights_only = model(ids).logits
    assert torch.equal(weights_only, want), float((weights_only - want).abs().max())
    cos = torch.nn.functional.cosine_similarity(with_act.flatten().float(), want.flatten().float(), dim=0)
    if scheme in QUANTIZES_ACTIVATIONS:
        assert 0.97 < cos < 1.0, float(cos)
    else:
        assert torch.equal(with_act, want)


@pytest.mark.parametrize("scheme", ["nvfp4", "mxfp4", "fp8-block"])
def test_formats_that_cannot_hold_the_scheme(capsys, tmp_path, bf16_llama, scheme):
    out = tmp_path / "x.gguf"
    code, o, e = run(capsys, "quantize", bf16_llama, "-o", out, "--scheme", scheme, "--format", "gguf")
    assert_one_line_error(code, o, e, 2, f"--format gguf cannot hold scheme {scheme}", "compressed-tensors or dense")
    assert not out.exists()
    code, o, e = run(capsys, "quantize", bf16_llama, "-o", out, "--scheme", scheme, "--group-size", "64")
    assert_one_line_error(code, o, e, 2, f"--group-size does not apply to {scheme}")
