"""The prune command shape: plan_prune checks and creates nothing, run_prune writes and restores the thread
setting, progress is in bytes, and the API's result is the CLI's JSON."""

from __future__ import annotations

import json

import pytest
import torch
from builders import write_checkpoint
from helpers import run
from safetensors import safe_open

import modelsurgeon as ms
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.io.output import Output
from modelsurgeon.ops.prune.plan import plan_prune
from modelsurgeon.ops.prune.run import run_prune
from modelsurgeon.recipes.prune import PruneConfig


class Recorder:
    def __init__(self):
        self.starts, self.done, self.notes = [], 0, []

    def start(self, description, total=None, unit="items"):
        self.starts.append((description, total, unit))

    def advance(self, n=1):
        self.done += n

    def note(self, message):
        self.notes.append(message)


@pytest.fixture
def ckpt(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(8, 32, generator=g),
        "b.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "b.bias": torch.randn(16, generator=g),
    }
    return write_checkpoint(tmp_path / "m", tensors)


def test_output_is_checked_before_the_model_is_opened(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(SurgeonError, match="already exists"):
        plan_prune(PruneConfig(sparsity=0.5), str(tmp_path / "no-such-model"), Output(taken))


def test_plan_creates_nothing_and_run_writes(tmp_path, ckpt):
    out = tmp_path / "out"
    before = torch.get_num_threads()
    with plan_prune(PruneConfig(sparsity=0.5, scope="global"), ckpt, Output(out)) as plan:
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["m"]
        assert [t.name for t in plan.pool] == ["a.weight", "b.weight"] and plan.pool_k == (256 + 128) // 2
        progress = Recorder()
        result = run_prune(plan, progress, command="test")
    assert torch.get_num_threads() == before  # the thread policy is undone
    ((desc, total, unit),) = progress.starts
    nbytes = 8 * 32 * 4 + 16 * 8 * 2
    # fp32 in the pool: up to two statistics passes over it (the second is skipped when the first one's
    # bucket ends exactly at the count), then every tensor once
    assert (desc, unit) == ("prune", "bytes") and total == 2 * nbytes + nbytes + 16 * 4
    assert progress.done in (total, total - nbytes)
    d = result.to_dict()
    assert d["output"] == str(out) and d["pruned"] == d["zeros"] == 192 and d["threshold"] > 0
    with safe_open(out / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["modelsurgeon_command"] == "test"
    assert json.loads(meta["modelsurgeon_recipe"]) == PruneConfig(sparsity=0.5, scope="global").to_dict()
    assert PruneConfig.build(out / "prune_recipe.yaml") == PruneConfig(sparsity=0.5, scope="global")
    with pytest.raises(ValueError, match="dry run"):
        with plan_prune(PruneConfig(sparsity=0.5), ckpt) as plan:
            run_prune(plan)


@pytest.mark.parametrize(
    "flags", [["--sparsity", "0.5", "--scope", "global"], ["--pattern", "2:4"], ["--sparsity", "0.25", "--scope", "row"]]
)
def test_api_result_is_the_cli_json(capsys, tmp_path, ckpt, flags):
    code, out, err = run(capsys, "prune", ckpt, "-o", tmp_path / "cli", *flags, "-q", "--json")
    assert code == 0, err
    cli = json.loads(out)
    settings = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
    if "sparsity" in settings:
        settings["sparsity"] = float(settings["sparsity"])
    api = ms.prune(ckpt, tmp_path / "api", **settings).to_dict()
    assert api.pop("output") == str(tmp_path / "api") and cli.pop("output") == str(tmp_path / "cli")
    assert api == cli
    code, out, err = run(capsys, "prune", ckpt, *flags, "--dry-run", "-q", "--json")
    assert code == 0, err
    assert ms.prune(ckpt, dry_run=True, **settings).to_dict() == json.loads(out)


def test_api_takes_a_recipe_or_a_config(tmp_path, ckpt):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsity: 0.5\noverrides:\n  - {match: '^b', sparsity: 0.25}\n")
    r = ms.prune(ckpt, recipe=recipe, dry_run=True).to_dict()
    assert [t["pruned"] for t in r["tensors"]] == [128, 32]
    cfg = PruneConfig(sparsity=0.3, exclude="bias")
    r = ms.prune(ckpt, config=cfg, pattern="2:4", dry_run=True).to_dict()  # flags over the config: sparsity dropped
    assert r["pattern"] == "2:4" and "sparsity" not in r["recipe"] and r["recipe"]["exclude"] == "bias"
    with pytest.raises(TypeError):
        ms.prune(ckpt, config=cfg, recipe=recipe, dry_run=True)
    with pytest.raises(SurgeonError, match="-o OUT"):
        ms.prune(ckpt, sparsity=0.5)
