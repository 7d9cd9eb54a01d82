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


def test_progress_is_one_phase_per_run_and_one_step_per_epoch():
    rec = Recorder()
    ms.intrinsic_dim(task="toy", grid=(9, 10), device="cpu", progress=rec)
    starts = [e for e in rec.events if e[0] == "start"]
    assert [e[1] for e in starts] == ["run 1: baseline (all D, direct)", "run 2: d = 9  seed 0", "run 3: d = 10  seed 0"]
    assert all(e[2] == 3 and e[3] == "epochs" for e in starts)  # toy: 3 L-BFGS rounds
    assert sum(1 for e in rec.events if e[0] == "advance") == 9
    assert rec.events[0][0] == "note" and rec.events[0][1].startswith("intrinsic-dim: toy on toy: D = 1,000")


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
