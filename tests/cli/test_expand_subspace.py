"""`surgeon expand-subspace`: theta_0 + P theta_d rebuilt from seeds equals the trained weights bit for bit,
for every projection, with SAID, from a built-in init and from a checkpoint; and refuses the wrong base."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from helpers import assert_one_line_error, run
from safetensors.torch import load_file, save_file

from modelsurgeon.ops.intrinsic.models import model_for_task
from modelsurgeon.ops.intrinsic.problem import Problem
from modelsurgeon.ops.intrinsic.subspace import save_subspace
from modelsurgeon.ops.intrinsic.tasks import load_task
from modelsurgeon.ops.intrinsic.train import train_run
from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained(task: str, d: int, **cfg_kw):
    cfg = IntrinsicDimConfig(task=task, **cfg_kw)
    t = load_task(task)
    cfg = cfg.with_task_defaults(t.defaults)
    if cfg.baseline_lr is None:
        cfg = dataclasses.replace(cfg, baseline_lr=1e-3)
    built = model_for_task(t, cfg, None)
    problem = Problem(built, t, "cpu", cfg.include, cfg.exclude, cfg.said)
    run_ = train_run(problem, cfg, d, 0, keep_flat=True)
    return problem, cfg, run_


@pytest.mark.parametrize(
    "task,d,kw",
    [
        ("digits", 40, {"projection": "sparse", "epochs": 2}),
        ("digits", 40, {"projection": "dense", "epochs": 2, "proj_seed": 3, "init_seed": 5}),
        ("digits", 40, {"projection": "fastfood", "epochs": 1, "said": True}),
        ("toy", 12, {"projection": "fastfood", "said": True}),
    ],
    ids=["digits-sparse", "digits-dense-seeds", "digits-fastfood-said", "toy-fastfood-said"],
)
def test_expand_reproduces_the_trained_weights_exactly(capsys, tmp_path, task, d, kw):
    problem, cfg, r = trained(task, d, **kw)
    sub = tmp_path / "s.safetensors"
    save_subspace(sub, problem, cfg, r, {"task": task}, "test")
    stored = load_file(str(sub))
    assert stored["theta_d"].numel() == d - problem.m and torch.equal(stored["theta_d"], r.theta_d)
    if cfg.said:
        assert torch.equal(stored["said_scales"], r.scales) and not torch.equal(r.scales, torch.ones_like(r.scales))
    code, out, err = run(capsys, "expand-subspace", str(sub), "-o", str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert json.loads(out)["bit_exact"] is True
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    want = problem.params(r.flat)
    assert set(got) == set(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    # the expanded weights score what the run measured
    module = problem.built.module
    module.load_state_dict(got)
    with torch.no_grad():
        metric, _ = problem.task.evaluate(lambda b: module(*b.args, **b.kwargs), 256)
    assert metric == r.metric


def test_expand_from_a_checkpoint_checks_the_base(capsys, tmp_path):
    from builders import make_llama_with_tokenizer
    from transformers import AutoModelForCausalLM

    text = "the cat sat on the mat " * 200
    (tmp_path / "t.txt").write_text(text)
    base = make_llama_with_tokenizer(tmp_path / "llama", text)
    sub = tmp_path / "lm.safetensors"
    code, out, err = run(
        capsys,
        "intrinsic-dim",
        str(base),
        "--task",
        f"text:{tmp_path / 't.txt'}",
        "--grid",
        "64",
        "--epochs",
        "1",
        "--baseline",
        "1",
        "--threshold",
        "0.0001",
        "--threshold-from",
        "zero",
        "--save-subspace",
        str(sub),
        "--json",
        "-q",
    )
    assert code == 0, err
    code, out, err = run(capsys, "expand-subspace", str(sub), "-o", str(tmp_path / "ft"))
    assert code == 0, err
    assert "bit-exact" in out
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "ft"), local_files_only=True)  # a real checkpoint
    assert (tmp_path / "ft" / "tokenizer.json").is_file()
    # the base moved: --base finds it, checked by sha256
    shutil.copytree(base, tmp_path / "moved")
    code, out, err = run(capsys, "expand-subspace", str(sub), "--base", str(tmp_path / "moved"), "-o", str(tmp_path / "ft2"))
    assert code == 0, err
    # a different checkpoint is refused
    w = load_file(str(tmp_path / "moved" / "model.safetensors"))
    w["model.norm.weight"] = w["model.norm.weight"] * 2
    save_file(w, str(tmp_path / "moved" / "model.safetensors"), metadata={"format": "pt"})
    code, out, err = run(capsys, "expand-subspace", str(sub), "--base", str(tmp_path / "moved"), "-o", str(tmp_path / "ft3"))
    assert_one_line_error(code, out, err, 1, "is not the checkpoint the subspace was trained from")
    assert not (tmp_path / "ft3").exists()


def test_not_a_subspace_file(capsys, tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    code, out, err = run(capsys, "expand-subspace", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "o"))
    assert_one_line_error(code, out, err, 1, "not a subspace file", "--save-subspace")
    code, out, err = run(capsys, "expand-subspace", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "o"))
    assert_one_line_error(code, out, err, 1, "no such subspace file")


def test_output_exists(capsys, tmp_path):
    problem, cfg, r = trained("toy", 10)
    save_subspace(tmp_path / "s.safetensors", problem, cfg, r, {}, "test")
    (tmp_path / "o").mkdir()
    code, out, err = run(capsys, "expand-subspace", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "o"))
    assert_one_line_error(code, out, err, 1, "already exists", "--force")
