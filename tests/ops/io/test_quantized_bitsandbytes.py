"""Reading bitsandbytes-serialized checkpoints: files transformers + bitsandbytes wrote (made per session by
tests/data/bnb/make.py) dequantize to exactly bitsandbytes' own dequantize_4bit / int8_vectorwise_dequant
(sha256 of the bytes, in the model's bfloat16), under the plain model's names; the dense output loads in
transformers without bitsandbytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import run_json

from modelsurgeon.ops.io.checkpoint import open_checkpoint

MAKE = Path(__file__).resolve().parents[2] / "data" / "bnb" / "make.py"
KINDS = {
    "nf4": "nf4 block 64",
    "nf4-double": "nf4 block 64 (double quantized)",
    "fp4": "fp4 block 64",
    "int8": "int8 per row (LLM.int8)",
}


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.fixture(scope="session")
def bnb_dir(tmp_path_factory) -> Path:
    """The four checkpoints, saved by transformers with bitsandbytes, and bitsandbytes' own dequantization."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bnb_make", MAKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make(tmp_path_factory.mktemp("bnb"))


@pytest.fixture(autouse=True, params=["whole", "in-pieces"])
def chunking(request, monkeypatch):
    """Decode each weight whole, and a few hundred values at a time (row ranges, partial blocks)."""
    if request.param == "in-pieces":
        monkeypatch.setattr("modelsurgeon.ops.io.quantized.view.CHUNK_ELEMS", 300)


@pytest.mark.parametrize("kind", list(KINDS))
def test_equals_bitsandbytes_dequantization(kind, bnb_dir):
    ref = json.loads((bnb_dir / kind / "reference.json").read_text())["dequantized_bf16_sha256"]
    with open_checkpoint(bnb_dir / kind) as ck:
        assert ck.source_format == "bitsandbytes"
        assert not [n for n in ck.names() if "quant_state" in n or n.endswith((".SCB", "absmax", "quant_map", "weight_format"))]
        assert {n for n in ck.names() if ck.is_quantized(n)} == set(ref)
        for name, want in ref.items():
            t = ck.get(name)
            assert t.dtype == torch.bfloat16 and _digest(t) == want, name
            assert ck.describe(name)["scheme"] == KINDS[kind]


def test_dequantized_output_loads_in_transformers(capsys, tmp_path, bnb_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dense"
    r = run_json(capsys, "dequantize", bnb_dir / "nf4", "-o", out, "-q")
    assert r["source_format"] == "bitsandbytes" and r["dequantized_tensors"] == 7
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    with open_checkpoint(bnb_dir / "nf4") as ck:
        w = ck.get("model.layers.0.mlp.up_proj.weight")
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight.data.to(w.dtype), w)
