"""Reading compressed-tensors checkpoints that the library itself wrote: every format and strategy the presets
use dequantizes, tensor by tensor, to exactly what the library's own decompressor gives (same dtype, same
bits), under the original model's names, with the stored parts hidden and still reachable."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("compressed_tensors")
from builders import ct_reference, make_tiny_llama  # noqa: E402
from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationScheme  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from modelsurgeon.ops.io.checkpoint import open_checkpoint  # noqa: E402

CASES = [
    ("W4A16", None),  # pack-quantized int4, group 128
    ("W4A16_ASYM", None),  # + zero points packed along rows
    ("W2A16", None),  # 16 codes per word
    ("W3A16", None),  # codes straddling words
    ("W8A8", None),  # int-quantized, per channel
    ("W8A8", "naive-quantized"),
    ("FP8", None),  # float-quantized, per tensor (+ a static input scale the view hides)
    ("FP8_DYNAMIC", None),  # float-quantized, per channel
    ("FP8_BLOCK", None),  # float-quantized, 128x128 blocks (k/v rows: one partial block)
    ("NVFP4A16", None),  # nvfp4-pack-quantized: E2M1 codes, FP8 scales per 16, global scale
    ("NVFP4", None),  # + input_global_scale, hidden
    ("MXFP4A16", None),  # mxfp4-pack-quantized: E8M0 scales per 32
]


@pytest.fixture(autouse=True, params=["whole", "in-pieces"])
def chunking(request, monkeypatch):
    """Decode each weight whole, and a few hundred values at a time (row ranges, partial blocks)."""
    if request.param == "in-pieces":
        monkeypatch.setattr("modelsurgeon.ops.io.quantized.view.CHUNK_ELEMS", 300)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("ct-read") / "fp32", hidden_size=128, intermediate_size=256)


@pytest.mark.parametrize("preset,fmt", CASES, ids=[p + (f"-{f}" if f else "") for p, f in CASES])
def test_library_files_read_as_the_library_decompresses(tmp_path, llama, preset, fmt):
    out = ct_reference(llama, preset, tmp_path / "ct", fmt)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    group = qc["config_groups"]["group_0"]
    scheme = QuantizationScheme.model_validate({k: group[k] for k in ("targets", "weights", "input_activations", "format")})
    compressor = BaseCompressor.load_from_registry(group.get("format") or qc["format"])
    stored = load_file(out / "model.safetensors")
    source = load_file(llama / "model.safetensors")
    with open_checkpoint(out) as ck:
        assert ck.source_format == "compressed-tensors"
        assert set(ck.names()) == set(source), "the view lists the original model's tensors, nothing else"
        assert "quantization_config" not in ck.config and ck.source_quantization == qc
        checked = 0
        for name in ck.names():
            if not ck.is_quantized(name):
                assert torch.equal(ck.get(name), stored[name]), name
                continue
            module = name[: -len(".weight")]
            local = {k[len(module) + 1 :]: v for k, v in stored.items() if k.startswith(module + ".")}
            theirs = compressor.decompress(local, scheme)["weight"]
            ours = ck.get(name)
            assert ours.dtype == theirs.dtype and ours.shape == source[name].shape, name
            diff = (ours.float() != theirs.float()).nonzero()[:3].tolist()
            assert torch.equal(ours, theirs), f"{name}: differs at {diff}"
            assert ck.info(name).dtype == {torch.bfloat16: "BF16"}[ours.dtype]
            d = ck.describe(name)
            assert d["format"] == f"compressed-tensors {group.get('format') or qc['format']}"
            assert {p["name"] for p in d["parts"].values()} <= set(stored)
            checked += 1
        assert checked == 14  # 2 layers x 7 linears; lm_head is ignored
        raw = ck.raw.names()
        assert any(n.endswith("weight_scale") for n in raw)
