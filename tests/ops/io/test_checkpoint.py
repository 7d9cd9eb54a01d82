"""Reading checkpoints: every layout, the Hub cache, legacy .bin, and everything malformed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelsurgeon.ops.core.errors import CheckpointError
from modelsurgeon.ops.io.checkpoint import open_checkpoint, read_safetensors_header


def test_minilm_lists_104_tensors_lazily(minilm_dir):
    with open_checkpoint(minilm_dir) as ck:
        assert len(ck) == 104
        floats = [i for i in ck.infos() if i.is_float]
        assert len(floats) == 103
        pos = ck.info("embeddings.position_ids")
        assert pos.dtype == "I64" and pos.shape == (1, 512)
        assert sum(i.numel for i in floats) == 22_713_216
        assert {p.name for p in ck.aux_files()} >= {"config.json", "tokenizer.json", "vocab.txt"}


def test_get_matches_safetensors(minilm_dir):
    from safetensors import safe_open

    with open_checkpoint(minilm_dir) as ck, safe_open(str(minilm_dir / "model.safetensors"), "pt") as ref:
        for name in ["embeddings.position_ids", "encoder.layer.3.attention.self.query.weight", "pooler.dense.bias"]:
            assert torch.equal(ck.get(name), ref.get_tensor(name))


def test_chunks_reassemble_the_tensor(small_ckpt):
    with open_checkpoint(small_ckpt) as ck:
        for info in ck.infos():
            full = ck.get(info.name).reshape(-1)
            pieces = list(ck.iter_chunks(info.name, max_elems=7, align=4))
            assert all(p.numel() <= 7 and (p.numel() % 4 == 0 or p is pieces[-1]) for p in pieces)
            assert torch.equal(torch.cat(pieces), full)


def test_sharded_folder_and_index(tmp_path, small_ckpt):
    with open_checkpoint(small_ckpt) as ck:
        tensors = {n: ck.get(n) for n in ck.names()}
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:2]}, str(tmp_path / "a.safetensors"))
    save_file({n: tensors[n] for n in names[2:]}, str(tmp_path / "b.safetensors"))
    weight_map = {n: ("a.safetensors" if n in names[:2] else "b.safetensors") for n in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with open_checkpoint(tmp_path) as ck:
        assert sorted(ck.names()) == names
        for n in names:
            assert torch.equal(ck.get(n), tensors[n])


def test_legacy_bin_via_weights_only(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.zeros(3)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path) as ck:
        assert ck.kind == "torch"
        assert torch.equal(ck.get("w"), sd["w"])


def test_legacy_bin_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        open_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_tied_weights_in_bin_are_found(tmp_path):
    emb = torch.randn(5, 3)
    torch.save({"model.embed_tokens.weight": emb, "lm_head.weight": emb}, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path) as ck:
        assert ck.tied_aliases() == {"lm_head.weight": "model.embed_tokens.weight"}


# ---- the Hub path, against a local cache laid out the way huggingface_hub lays it out


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, data in files.items():
        blob = root / "blobs" / f"blob{abs(hash(name))}"
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))


def test_hub_id_resolves_from_offline_cache(tmp_path, monkeypatch, small_ckpt):
    files = {p.name: p.read_bytes() for p in small_ckpt.iterdir()}
    _fake_hub_cache(tmp_path / "hub", "acme/toy", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with open_checkpoint("acme/toy") as ck:
        assert ck.resolved.hub_id == "acme/toy"
        assert len(ck) == 5
        assert ck.config == {"model_type": "toy"}


def test_hub_id_missing_offline_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "hub").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        open_checkpoint("acme/absent")


# ---- malformed and hostile files


def _header_file(path: Path, header: dict, data: bytes = b"", claimed: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes((claimed if claimed is not None else len(raw)).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "invalid shape"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 0]}}, b"\0" * 16, "invalid data offsets"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16, "needs 8"),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            b"\0" * 24,
            "overlaps",
        ),
        ({"w": "nope"}, b"", "no dtype/shape"),
    ],
)
def test_malformed_headers(tmp_path, header, data, message):
    p = _header_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        read_safetensors_header(p)


def test_header_larger_than_file(tmp_path):
    p = _header_file(tmp_path / "x.safetensors", {"w": {}}, claimed=10_000)
    with pytest.raises(CheckpointError, match="header claims 10000 bytes"):
        read_safetensors_header(p)


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "notes.safetensors"
    p.write_text("these are my notes, not a model")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_checkpoint(p)


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd", "sub/../../x.safetensors", "C:\\x.safetensors"])
def test_index_naming_a_shard_outside_its_folder(tmp_path, shard):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(CheckpointError, match="outside its folder"):
        open_checkpoint(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing"):
        open_checkpoint(tmp_path)


def test_missing_path():
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint("./does/not/exist")
