"""The sharded writer: exact safetensors bytes, HF shard names and index, atomic output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.io.output import OutputDir
from modelsurgeon.ops.io.writer import ShardedWriter, TensorSpec, parse_size


def _tensors():
    g = torch.Generator().manual_seed(1)
    return {
        "a": torch.randn(100, 10, generator=g),  # 4000 bytes
        "b": torch.randn(30, generator=g).to(torch.bfloat16),
        "c": torch.arange(5, dtype=torch.int64),
        "d": torch.randn(2, 3, generator=g).half(),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("max_shard", [10**9, 1000])
def test_written_shards_load_in_safetensors(tmp_path, max_shard):
    tensors = _tensors()
    w = ShardedWriter(tmp_path, [TensorSpec.like(n, t) for n, t in tensors.items()], max_shard, {"note": "x"})
    for n, t in tensors.items():
        w.write(n, t)
    files = w.close()
    if max_shard == 1000:
        assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors)
        loaded = {}
        for f in files:
            loaded.update(load_file(str(tmp_path / f)))
    else:
        assert files == ["model.safetensors"]
        loaded = load_file(str(tmp_path / "model.safetensors"))
        with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
            assert f.metadata() == {"format": "pt", "note": "x"}
    for n, t in tensors.items():
        assert loaded[n].dtype == t.dtype and torch.equal(loaded[n], t), n


def test_writer_refuses_out_of_plan_tensors(tmp_path):
    w = ShardedWriter(tmp_path, [TensorSpec("a", (2,), torch.float32)], 10**9)
    with pytest.raises(RuntimeError, match="planned"):
        w.write("a", torch.zeros(3))


def test_output_dir_is_atomic(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with OutputDir(target) as out:
            (out.path / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_output_dir_refuses_existing_without_force(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(SurgeonError, match="--force"):
        OutputDir(tmp_path / "out")
    with OutputDir(tmp_path / "out", force=True) as out:
        (out.path / "new").write_text("1")
        out.commit()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]


@pytest.mark.parametrize("text, value", [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("1000", 1000), ("1.5kb", 1500)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_nonsense():
    with pytest.raises(UsageError):
        parse_size("lots")
