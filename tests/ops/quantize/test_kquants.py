"""K-quant super-blocks (Q2_K ... Q6_K) and the importance-weighted searches against llama.cpp itself: our bytes
equal ``ggml_quantize_chunk`` from the libggml that llama-cpp-python ships (what llama-quantize calls per
tensor), with and without an importance matrix, and our dequantization equals gguf-py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ggml_quantize

from modelsurgeon.ops.quantize.gguf_blocks import dequantize_blocks, quantize_blocks

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")


def _cases(cols: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "normal": r(24, cols) * 0.02,
        "heavy tails": r(16, cols) * torch.rand(16, cols, generator=g).pow(4) * 3,
        "positive": torch.rand(8, cols, generator=g),
        "zero and tiny rows": torch.cat([torch.zeros(2, cols), r(2, cols) * 1e-3, r(2, cols) * 1e-7]),
        "fp16 values": r(8, cols).half().float(),
        "sparse": r(8, cols) * (torch.rand(8, cols, generator=g) < 0.1),
    }


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_kquant_blocks_equal_ggml(qtype, weighted):
    g = torch.Generator().manual_seed(1)
    for name, x in _cases(512).items():
        im = torch.rand(x.shape[1], generator=g) * 2 + 0.01 if weighted else None
        ours = quantize_blocks(x, qtype, use_triton=False, imatrix=im).numpy()
        ref = ggml_quantize(x.numpy(), qtype, None if im is None else im.numpy())
        assert ours.shape == ref.shape
        differ = int((ours != ref).any(axis=1).sum())
        assert differ == 0, f"{qtype} {name}: {differ} of {len(ref)} rows differ"
        want = gguf.quants.dequantize(ref, gguf.GGMLQuantizationType[qtype]).reshape(x.shape)
        assert np.array_equal(dequantize_blocks(torch.from_numpy(ref), qtype, tuple(x.shape)).numpy(), want), name


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_legacy_blocks_with_an_importance_matrix_equal_ggml(qtype):
    g = torch.Generator().manual_seed(2)
    for name, x in _cases(256).items():
        im = torch.rand(x.shape[1], generator=g) * 2 + 0.01
        ours = quantize_blocks(x, qtype, use_triton=False, imatrix=im).numpy()
        ref = ggml_quantize(x.numpy(), qtype, im.numpy())
        assert np.array_equal(ours, ref), f"{qtype} {name}"


def test_error_measured_while_encoding_kquants():
    x = _cases(256)["normal"]
    err: list = []
    blocks = quantize_blocks(x, "Q4_K", use_triton=False, error=err)
    back = dequantize_blocks(blocks, "Q4_K", tuple(x.shape))
    sig, noise = err[0]
    assert sig == pytest.approx(float(x.square().sum()), rel=1e-5)
    assert noise == pytest.approx(float((back - x).square().sum()), rel=1e-5)


def test_kquant_rows_must_be_whole_super_blocks():
    with pytest.raises(ValueError, match="256"):
        quantize_blocks(torch.zeros(2, 128), "Q4_K", use_triton=False)
