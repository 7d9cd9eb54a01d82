"""The Python API runs the CLI's code path: the same JSON, progress through ops.core.progress (one phase per
run, one step per epoch), and the subspace file and the plot written by the run, not by the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run

import modelsurgeon as ms
from modelsurgeon.ops.core.errors import PlanError
from modelsurgeon.ops.intrinsic.plan import plan_intrinsic_dim
from modelsurgeon.recipes.intrinsic_dim import IntrinsicDimConfig


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Recorder:
    def __init__(self):
        self.events: list[tuple] = []

    def start(self, description, total=None, unit="items"):
        self.events.append(("start", description, total, unit))

    def advance(self, n=1):
        self.events.append(("advance", n))

    def note(self, message):
        self.events.append(("note", message))

    def update(self, description=None, total=None):
        self.events.append(("update", description, total))


def _without_seconds(o):
    if isinstance(o, dict):
        return {k: _without_seconds(v) for k, v in o.items() if k != "seconds"}
    if isinstance(o, list):
        return [_without_seconds(v) for v in o]
    return o


def test_api_gives_the_json_the_cli_prints(capsys):
    code, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "9,10", "--json", "-q")
    assert code == 0, err
    result = ms.intrinsic_dim(task="toy", grid="9,10", device="cpu")
    assert _without_seconds(result.to_dict()) == _without_seconds(json.loads(out))
    assert list(result.to_dict()) == list(json.loads(out))
    assert result.d_int == 10 and result.measurement.run_at(10).theta_d.numel() == 10


def _runs_bar(rec):
    """The one phase a measurement starts, its totals over time, the labels and the units advanced."""
    starts = [e for e in rec.events if e[0] == "start"]
    assert len(starts) == 1 and starts[0][1:] == ("intrinsic-dim", starts[0][2], "runs")
    totals = [starts[0][2]] + [e[2] for e in rec.events if e[0] == "update" and e[2] is not None]
    labels = [e[1] for e in rec.events if e[0] == "update" and e[1] is not None]
    done = sum(e[1] for e in rec.events if e[0] == "advance")
    return totals, labels, done


def test_progress_counts_runs_an_epoch_a_share_of_one():
    rec = Recorder()
    result = ms.intrinsic_dim(task="toy", grid=(9, 10), device="cpu", progress=rec)
    totals, labels, done = _runs_bar(rec)
    assert labels == ["run 1: baseline (all D, direct)", "run 2: d = 9  seed 0", "run 3: d = 10  seed 0"]
    assert set(totals) == {3} and done == pytest.approx(3)  # a grid knows its runs: the baseline and two d
    advances = [e[1] for e in rec.events if e[0] == "advance"]
    assert len(advances) == 9 and advances[0] == pytest.approx(1 / 3)  # toy: 3 L-BFGS rounds a run
    assert len(result.measurement.runs) + 1 == 3
    assert rec.events[0][0] == "note" and rec.events[0][1].startswith("intrinsic-dim: toy on toy: D = 1,000")


def test_a_search_total_is_the_most_runs_left_and_ends_at_the_runs_made():
    from modelsurgeon.ops.intrinsic.search import bisections

    rec = Recorder()
    result = ms.intrinsic_dim(task="toy", seeds=2, device="cpu", progress=rec)
    totals, labels, done = _runs_bar(rec)
    made = len(result.measurement.runs) + 1  # and the baseline
    assert len(labels) == made and done == pytest.approx(made) and totals[-1] == made
    assert all(t >= made for t in totals)  # never fewer than it then made: an ETA that does not promise too soon
    assert totals[0] > made  # the first is the bound: doubling up to d_max = D = 1,000 before the answer 10
    assert bisections(8, 16, 0.05) == 3 and bisections(0, 1, 0.05) == 0  # (8, 16] -> 12 -> 10 -> 9


def test_the_run_writes_the_subspace_file_and_the_plot_and_expand_reads_it(tmp_path):
    pytest.importorskip("matplotlib")
    sub, png = tmp_path / "s.safetensors", tmp_path / "c.png"
    result = ms.intrinsic_dim(task="toy", grid=[10], baseline=1.0, device="cpu", save_subspace=sub, plot=png)
    data = result.to_dict()
    assert data["subspace_file"] == str(sub) and data["plot"] == str(png)
    assert png.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*tmp*"))
    ex = ms.expand_subspace(sub, tmp_path / "out")
    assert ex.bit_exact and ex.to_dict() == {
        "subspace": str(sub),
        "output": str(tmp_path / "out"),
        "d": 10,
        "D": 1000,
        "projection": "sparse",
        "tensors": 1,
        "params": 1000,
        "bit_exact": True,
        "source": "toy",
    }


def test_config_and_settings_combine():
    cfg = IntrinsicDimConfig(task="toy", grid=(9,))
    result = ms.intrinsic_dim(config=cfg, grid=(10,), baseline=1.0, device="cpu")
    assert [r["d"] for r in result.to_dict()["records"]] == [10]


def test_plan_reports_every_clash_at_once_before_loading_anything():
    cfg = IntrinsicDimConfig(task="toy", arch="fc", grid=(4,), d_max=7)
    with pytest.raises(PlanError) as e:
        plan_intrinsic_dim(cfg, "no/such-model")
    assert e.value.exit_code == 2 and len(e.value.problems) == 3
    assert "--arch describe a built-in network" in e.value.problems[0]


def test_plan_fills_every_default():
    with plan_intrinsic_dim(IntrinsicDimConfig(task="toy", epochs=5), device="cpu") as plan:
        cfg = plan.config
        assert cfg.epochs == 5 and cfg.optimizer == "lbfgs" and cfg.projection == "sparse" and cfg.baseline_lr == 1.0
        assert plan.problem.D == 1000
