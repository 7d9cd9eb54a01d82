"""Our GGUF blocks are byte-identical to gguf-py's ``gguf.quants.quantize`` (which matches ggml's C code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402

from modelsurgeon.ops.quantize.gguf_blocks import dequantize_blocks, quantize_blocks  # noqa: E402

QTYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def _cases():
    g = torch.Generator().manual_seed(0)
    ties = torch.randn(4, 64, generator=g)
    ties[0, :32] = 1.0
    ties[0, 5] = -1.0  # +a/-a tie for the largest magnitude
    ties[1, 3], ties[1, 9] = -2.0, 2.0
    ties[2] = 0.0  # all-zero blocks
    ties[3, :32] = torch.linspace(-4, 4, 32)  # exact halves
    return {
        "gaussian": torch.randn(64, 256, generator=g),
        "small": torch.randn(7, 96, generator=g) * 1e-3,
        "heavy tails": torch.randn(16, 128, generator=g) ** 3,
        "integers": torch.randint(-3, 4, (8, 64), generator=g).float(),
        "ties and zeros": ties,
        "from fp16": torch.randn(3, 32, generator=g).half().float(),
        "from bf16": torch.randn(5, 160, generator=g).bfloat16().float(),
    }


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("case", list(_cases()))
def test_blocks_are_byte_identical_to_gguf_py(qtype, case):
    x = _cases()[case]
    ours = quantize_blocks(x, qtype).numpy()
    theirs = gguf.quants.quantize(x.numpy(), GGMLQuantizationType[qtype])
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    bad = np.argwhere(ours != theirs)
    assert bad.size == 0, f"{len(bad)} bytes differ, first at {bad[:3].tolist()}"
    back = dequantize_blocks(torch.from_numpy(ours), qtype, tuple(x.shape)).numpy()
    assert np.array_equal(back, gguf.quants.dequantize(theirs, GGMLQuantizationType[qtype]))


@pytest.mark.parametrize("qtype", QTYPES)
def test_error_measured_while_encoding_equals_the_dequantized_error(qtype):
    x = _cases()["gaussian"]
    err: list = []
    blocks = quantize_blocks(x, qtype, error=err)
    deq = dequantize_blocks(blocks, qtype, tuple(x.shape)).double()
    sig, noise = err[0]
    assert sig == pytest.approx(float(x.double().square().sum()), rel=1e-5)  # fp32 sums per chunk
    assert noise == pytest.approx(float((deq - x.double()).square().sum()), rel=1e-5)


def test_row_length_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        quantize_blocks(torch.zeros(2, 48), "Q4_0")
