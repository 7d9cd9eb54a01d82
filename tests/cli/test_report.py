"""`surgeon report` through the real entry point: output, gates, comparison, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from builders import write_checkpoint
from helpers import assert_one_line_error, run, run_json


def test_minilm_report_lists_all_tensors(capsys, minilm_dir):
    r = run_json(capsys, "report", minilm_dir, "-q")
    assert r["num_tensors"] == 104 and len(r["tensors"]) == 104
    assert r["total_params"] == 22_713_216 + 512
    assert r["dtypes"] == {"I64": 512, "F32": 22_713_216}
    pos = next(t for t in r["tensors"] if t["name"] == "embeddings.position_ids")
    assert pos["nonzero"] == 511 and pos["dtype"] == "I64"  # 0..511 has one zero
    for t in r["tensors"]:
        assert set(t) >= {"name", "shape", "dtype", "numel", "nonzero", "sparsity"}


def test_stats_are_right(capsys, tmp_path):
    w = torch.tensor([[1.0, 0.0, -2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])  # second group has 2 nonzeros, first 2
    write_checkpoint(tmp_path / "m", {"w": w, "v": torch.tensor([1.0, 1.0, 1.0, 0.0])})
    r = run_json(capsys, "report", tmp_path / "m", "-q")
    t = {x["name"]: x for x in r["tensors"]}
    assert t["w"]["nonzero"] == 4 and t["w"]["sparsity"] == 0.5 and t["w"]["nm_2_4"] is True
    assert t["w"]["mean_abs"] == pytest.approx(10 / 8) and t["w"]["min"] == -2.0 and t["w"]["max"] == 4.0
    assert t["w"]["std"] == pytest.approx(w.std(unbiased=False).item())
    assert t["v"]["nm_2_4"] is False
    assert r["nonzero_params"] == 7 and r["sparsity"] == pytest.approx(5 / 12)


def test_compare_with_itself_is_zero_distance(capsys, minilm_dir):
    r = run_json(capsys, "report", minilm_dir, "--compare", minilm_dir, "-q", "--top", "3")
    c = r["compare"]
    assert c["compared_tensors"] == 104
    assert c["max_rel_l2"] == 0 and c["min_cosine"] == 1 and c["changed_fraction"] == 0
    assert c["missing"] == c["extra"] == c["shape_changes"] == 0
    assert len(r["tensors"]) == 3


def test_compare_lists_missing_extra_and_shape_changes(capsys, tmp_path):
    a = write_checkpoint(tmp_path / "a", {"x": torch.ones(4), "y": torch.ones(2, 2), "gone": torch.ones(1)})
    b = write_checkpoint(tmp_path / "b", {"x": torch.tensor([1.0, 1.0, -1.0, 0.0]), "y": torch.ones(4), "new": torch.ones(1)})
    r = run_json(capsys, "report", a, "--compare", b, "-q")
    c = r["compare"]
    assert c["missing_tensors"] == ["gone"] and c["extra_tensors"] == ["new"]
    assert c["shape_changed_tensors"] == [{"name": "y", "shape": [2, 2], "other_shape": [4]}]
    x = next(t for t in r["tensors"] if t["name"] == "x")
    assert x["changed_fraction"] == 0.5 and x["sign_agreement"] == 0.5
    assert x["rel_l2"] == pytest.approx((4 + 1) ** 0.5 / 2)
    assert x["cosine"] == pytest.approx(1 / (2 * 3**0.5))


def test_require_gates_ci(capsys, minilm_dir):
    code, out, err = run(
        capsys, "report", minilm_dir, "-q", "--json", "--require", "sparsity>=0.5", "--require", "num_tensors==104"
    )
    assert code == 1
    assert json.loads(out)["requirements"][1]["ok"] is True
    assert "requirement failed: sparsity>=0.5" in err and "Traceback" not in err
    code, _, _ = run(capsys, "report", minilm_dir, "-q", "--require", "sparsity<0.01", "--require", "total_params>1e6")
    assert code == 0


def test_filter_restricts_tensors_and_totals(capsys, minilm_dir):
    r = run_json(capsys, "report", minilm_dir, "-q", "--filter", r"^encoder\.layer\.0\.")
    assert r["num_tensors"] == 16 and all(t["name"].startswith("encoder.layer.0.") for t in r["tensors"])


def test_table_goes_to_stdout_and_progress_to_stderr(capsys, small_ckpt):
    code, out, err = run(capsys, "report", small_ckpt)
    assert code == 0 and "layers.0.linear.weight" in out and "sparsity" in out
    assert "layers.0.linear.weight" not in err


def test_hub_id_offline_not_cached(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    assert_one_line_error(*run(capsys, "report", "acme/nothing-here"), 1, "HF_HUB_OFFLINE")


# ---- bad input: one line, the right exit code, no traceback


def test_missing_path(capsys):
    assert_one_line_error(*run(capsys, "report", "no/such/dir/x"), 1, "no such file or folder")


def test_not_safetensors(capsys, tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_text("hello, world! definitely not tensors")
    assert_one_line_error(*run(capsys, "report", p), 1, "not a safetensors file")


def test_truncated(capsys, tmp_path, small_ckpt):
    data = (small_ckpt / "model.safetensors").read_bytes()
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:-10])
    assert_one_line_error(*run(capsys, "report", p), 1, "truncated")


def test_header_larger_than_file(capsys, tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes((1 << 20).to_bytes(8, "little") + b'{"w": {}}')
    assert_one_line_error(*run(capsys, "report", p), 1, "corrupt")


def test_index_escaping_its_folder(capsys, tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
    assert_one_line_error(*run(capsys, "report", tmp_path), 1, "outside its folder")


def test_index_missing_shard(capsys, tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "m-1.safetensors"}}))
    assert_one_line_error(*run(capsys, "report", tmp_path), 1, "missing")


@pytest.mark.parametrize("expr", ["sparsity >> 0.5", "sparsity>=", "bogus>=1", "max_rel_l2<1"])
def test_bad_require_expression_is_usage_error(capsys, small_ckpt, expr):
    assert_one_line_error(*run(capsys, "report", small_ckpt, "--require", expr), 2, "--require")


def test_bad_filter(capsys, small_ckpt):
    assert_one_line_error(*run(capsys, "report", small_ckpt, "--filter", "("), 2, "regular expression")
    assert_one_line_error(*run(capsys, "report", small_ckpt, "--filter", "zzz"), 1, "matches no tensor")


def test_unknown_flag_is_one_line_usage_error(capsys, small_ckpt):
    assert_one_line_error(*run(capsys, "report", small_ckpt, "--frobnicate"), 2, "--frobnicate")
    assert_one_line_error(*run(capsys, "report", small_ckpt, "--top", "0"), 2, "--top")


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "modelsurgeon", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "SURGEON_DEBUG": "1"},
    )
    assert r.returncode != 0 and "Traceback" in r.stderr
