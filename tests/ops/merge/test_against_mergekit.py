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
