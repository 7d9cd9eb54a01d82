"""The Triton switch: auto picks torch on the CPU, Triton on CUDA; forcing works under the interpreter."""

import pytest
import torch

from modelsurgeon.kernels import interpreting, should_use_triton, triton_importable


def test_auto_uses_torch_on_cpu():
    assert should_use_triton(torch.device("cpu")) is False
    assert should_use_triton("cpu", False) is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_forced_on_cpu_needs_the_interpreter():
    assert interpreting(), "tests/conftest.py sets TRITON_INTERPRET=1 without a GPU"
    assert triton_importable()
    assert should_use_triton("cpu", True) is True


@pytest.mark.gpu
def test_auto_uses_triton_on_cuda():
    assert should_use_triton(torch.device("cuda")) is True
