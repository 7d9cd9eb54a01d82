"""Multi-document recipes (mergekit-multi): stages run in dependency order; bad graphs fail up front."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from builders import make_tiny_llama
from helpers import run, run_json
from safetensors.torch import load_file, save_file


def finetune(src: Path, dst: Path, seed: int) -> Path:
    shutil.copytree(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in sd.items()}, str(dst / "model.safetensors"))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    base = make_tiny_llama(root / "base", seed=0, num_hidden_layers=1)
    return {"base": base, **{n: finetune(base, root / n, i) for i, n in enumerate("abc", 1)}}


def test_stages_equal_running_them_one_by_one(capsys, models, tmp_path):
    m = models
    stage1 = f"name: blend\nmerge_method: linear\nmodels:\n  - {{model: {m['a']}, parameters: {{weight: 0.7}}}}\n  - {{model: {m['b']}, parameters: {{weight: 0.3}}}}\n"
    final = f"merge_method: ties\nbase_model: {m['base']}\nmodels:\n  - {{model: blend, parameters: {{weight: 1.0, density: 0.5}}}}\n  - {{model: {m['c']}, parameters: {{weight: 0.5, density: 0.5}}}}\n"
    multi = tmp_path / "multi.yml"
    multi.write_text(final + "---\n" + stage1)  # the order of the documents does not matter
    out = tmp_path / "out"
    r = run_json(capsys, "merge", str(multi), "-o", str(out), "-q")
    assert r["stages"] == ["blend", "final"] and r["method"] == "ties"
    assert not any(p.name.startswith(".out.stages") for p in tmp_path.iterdir())  # the temporary stage is gone
    (tmp_path / "s1.yml").write_text(stage1)
    run_json(capsys, "merge", str(tmp_path / "s1.yml"), "-o", str(tmp_path / "blend"), "-q")
    (tmp_path / "s2.yml").write_text(final.replace("model: blend", f"model: {tmp_path / 'blend'}"))
    run_json(capsys, "merge", str(tmp_path / "s2.yml"), "-o", str(tmp_path / "manual"), "-q")
    got, want = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "manual" / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    # with --intermediate-dir the stage is kept and reused
    keep = tmp_path / "keep"
    run_json(capsys, "merge", str(multi), "-o", str(tmp_path / "out2"), "--intermediate-dir", str(keep), "-q")
    assert (keep / "blend" / "model.safetensors").is_file()


def test_bad_stage_graphs_fail_before_anything_is_written(capsys, models, tmp_path):
    m = models
    doc = lambda name, uses: (
        (f"name: {name}\n" if name else "")
        + f"merge_method: linear\nmodels:\n  - {{model: {uses}, parameters: {{weight: 1.0}}}}\n  - {{model: {m['a']}, parameters: {{weight: 1.0}}}}\n"
    )  # noqa: E731
    multi = tmp_path / "bad.yml"
    multi.write_text("---\n".join([doc("x", "y"), doc("y", "x"), doc(None, "x"), doc(None, "nosuchstage")]))
    out = tmp_path / "never"
    code, stdout, err = run(capsys, "merge", str(multi), "-o", str(out))
    assert code == 1 and stdout == "" and "Traceback" not in err
    assert "the stages form a cycle: x -> y -> x" in err or "the stages form a cycle: y -> x -> y" in err
    assert "uses 'nosuchstage', which names no stage (stages: x, y)" in err
    assert "documents 3, 4 have no name" in err
    assert not out.exists() and not any(p.name.startswith(".never") for p in tmp_path.iterdir())
