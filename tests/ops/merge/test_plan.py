"""Planning and running a merge from Python: config -> plan -> run -> result, the same numbers as the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import make_tiny_llama
from helpers import run_json
from safetensors.torch import load_file, save_file

from modelsurgeon import api
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.progress import silent
from modelsurgeon.ops.io.output import Output
from modelsurgeon.ops.merge.jobs import JobBuilder
from modelsurgeon.ops.merge.plan import plan_merge
from modelsurgeon.ops.merge.run import run_merge
from modelsurgeon.recipes.merge import MergeConfig, MergeRecipe
from modelsurgeon.recipes.mergekit import parse_recipe


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plan")
    base = make_tiny_llama(root / "base", seed=0)
    out = {"base": base}
    for i, name in ((1, "a"), (2, "b")):
        dst = root / name
        shutil.copytree(base, dst)
        sd = load_file(str(base / "model.safetensors"))
        g = torch.Generator().manual_seed(i)
        save_file({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in sd.items()}, str(dst / "model.safetensors"))
        out[name] = dst
    return out


def ties(models, **extra) -> MergeRecipe:
    text = (
        f"merge_method: ties\nbase_model: {models['base']}\nmodels:\n"
        f"  - model: {models['a']}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
        f"  - model: {models['b']}\n    parameters: {{weight: 0.4, density: [1, 0.3]}}\n"
    )
    return parse_recipe(text + "".join(f"{k}: {v}\n" for k, v in extra.items()), "ties.yml")


def test_the_method_is_looked_up_before_any_model_is_opened(models):
    def opener(ref):
        raise AssertionError(f"{ref} was opened")

    cfg = MergeConfig(recipe=parse_recipe(f"merge_method: ties-merging\nmodels: [{models['a']}]\n"))
    with pytest.raises(SurgeonError, match="unknown merge method 'ties-merging'"):
        plan_merge(cfg, opener=opener)


def test_api_merge_gives_the_cli_s_json_and_tensors(capsys, models, tmp_path):
    recipe = ties(models)
    (tmp_path / "ties.yml").write_text(recipe.text)
    want = run_json(capsys, "merge", tmp_path / "ties.yml", "-o", tmp_path / "cli", "--seed", "2", "-q")
    progress = silent()
    got = api.merge(recipe, tmp_path / "api", seed=2, progress=progress)
    d = got.to_dict()
    assert list(d) == list(want) and {**d, "seconds": 0, "output": ""} == {**want, "seconds": 0, "output": ""}
    assert got.ok and got.dry_run is False and got.output == str(tmp_path / "api") and got.merged_tensors == 21
    a, b = load_file(str(tmp_path / "api" / "model.safetensors")), load_file(str(tmp_path / "cli" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dry_run_writes_nothing_and_reports_the_plan(models, tmp_path):
    r = api.merge(MergeConfig(recipe=ties(models), out_dtype="bf16"), tmp_path / "out", dry_run=True)
    d = r.to_dict()
    assert d["dry_run"] is True and d["output"] == str(tmp_path / "out") and d["peak_memory_estimate"] > 0
    assert "seconds" not in d and "files" not in d and d["dtypes"] == {"BF16": sum(d["dtypes"].values())}
    assert not (tmp_path / "out").exists()
    assert api.merge(ties(models), dry_run=True).output is None  # no output needed to plan


def test_plan_then_run_closes_the_models_and_keeps_the_thread_count(models, tmp_path):
    threads = torch.get_num_threads()
    with plan_merge(MergeConfig(recipe=ties(models)), Output.of(tmp_path / "out")) as plan:
        ck = plan.models.ck(0)
        ck.get(ck.names()[0])  # opens a file handle
        assert ck._handles
        result = run_merge(plan)
    assert not ck._handles and torch.get_num_threads() == threads
    assert result.files == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 2


def test_the_merging_thread_keeps_the_thread_policy_s_count(models, tmp_path, monkeypatch):
    """The reader thread sets one intra-op thread for itself; the merging thread keeps the policy's count
    (torch applies a thread's count lazily, from the last one set by any thread, unless pinned)."""
    from contextlib import contextmanager

    from modelsurgeon.ops.merge import run

    @contextmanager
    def two_threads():
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            yield 2
        finally:
            torch.set_num_threads(before)

    seen = []
    compute = run.compute_job

    def spy(plan, job, tensors):
        seen.append(torch.get_num_threads())
        return compute(plan, job, tensors)

    monkeypatch.setattr(run, "cpu_threads", two_threads)
    monkeypatch.setattr(run, "compute_job", spy)
    api.merge(ties(models), tmp_path / "out")
    assert set(seen) == {2}


def test_warnings_go_to_progress_notes(models, tmp_path):
    text = f"merge_method: linear\nmodels:\n  - model: {models['a']}\n    parameters: {{weight: 1, density: 0.3}}\n"
    progress = silent()
    r = api.merge(parse_recipe(text, "lin.yml"), dry_run=True, progress=progress)
    assert progress.notes == [f"warning: {w}" for w in r.warnings] and "linear does not use density" in progress.notes[0]


def test_every_job_of_every_layout_comes_from_one_builder(models, monkeypatch):
    calls = []
    add = JobBuilder.add

    def counting(self, out_name, *args, **kw):
        calls.append(out_name)
        return add(self, out_name, *args, **kw)

    monkeypatch.setattr(JobBuilder, "add", counting)
    stack = parse_recipe(
        f"merge_method: passthrough\nslices:\n  - sources:\n      - {{model: {models['a']}, layer_range: [0, 2]}}\n"
        f"  - sources:\n      - {{model: {models['b']}, layer_range: [1, 2]}}\n"
    )
    for recipe in (ties(models), stack):
        calls.clear()
        with plan_merge(MergeConfig(recipe=recipe)) as plan:
            assert calls == [j.name for j in plan.jobs]
    assert "model.layers.2.mlp.up_proj.weight" in calls  # the stacked layer, renumbered


def test_extract_lora_through_the_api(capsys, models, tmp_path):
    dry = api.extract_lora(models["a"], models["base"], tmp_path / "x", rank=2, dry_run=True)
    assert dry.to_dict() == {
        "finetune": str(models["a"]),
        "base": str(models["base"]),
        "rank": 2,
        "sv_threshold": None,
        "modules": 14,
        "candidates_for_full_save": 7,
        "dry_run": True,
        "output": str(tmp_path / "x"),
    }
    want = run_json(capsys, "merge", "--extract-lora", models["a"], "--base", models["base"], "--rank", "2", "-o", tmp_path / "c")
    r = api.extract_lora(models["a"], models["base"], tmp_path / "x", rank=2)
    d = r.to_dict()
    assert list(d) == list(want) and d["full_tensors"] == want["full_tensors"] and d["modules"] == 14
    assert r.adapter_config == json.loads((tmp_path / "x" / "adapter_config.json").read_text())
