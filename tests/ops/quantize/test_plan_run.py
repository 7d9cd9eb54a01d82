"""The command shape of quantize: the plan opens and checks but creates nothing, the run writes and reports
progress, and ``modelsurgeon.quantize`` returns the result whose ``to_dict()`` the CLI prints."""

from __future__ import annotations

import pytest
from builders import make_tiny_llama
from helpers import run_json

import modelsurgeon as ms
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.quantize.plan import plan_quantize
from modelsurgeon.ops.quantize.run import QuantizeResult, run_quantize
from modelsurgeon.recipes.quantize import QuantizeConfig


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("plan") / "tiny")


class Recorder:
    def __init__(self):
        self.events = []

    def start(self, description, total=None, unit="items"):
        self.events.append(("start", description, total, unit))

    def advance(self, n=1):
        self.events.append(("advance", n))

    def note(self, message):
        self.events.append(("note", message))


def test_the_plan_checks_and_creates_nothing(tmp_path, llama):
    out = tmp_path / "out"
    with plan_quantize(QuantizeConfig(scheme="w4a16", optimizer="hqq"), str(llama), str(out)) as plan:
        assert plan.format == "compressed-tensors" and plan.spec.group_size == 64 and len(plan.targets) == 14
        assert plan.bytes_to_read == sum(i.nbytes for i in plan.ck.infos())
        assert any("HQQ's default" in n for n in plan.notes)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_run_reports_progress_and_notes(tmp_path, llama):
    rec = Recorder()
    cfg = QuantizeConfig(scheme="w4a16", group_size=32, asym=True)
    with plan_quantize(cfg, str(llama), str(tmp_path / "o")) as plan:
        total = len(plan.targets)  # the bar counts quantized tensors, the work that dominates
        result = run_quantize(plan, rec, command="test")
    assert isinstance(result, QuantizeResult) and (tmp_path / "o" / "model.safetensors").exists()
    kinds = [e[0] for e in rec.events]
    assert kinds.index("note") < kinds.index("start")  # notes first, above the bar
    assert ("start", "quantize w4a16", total, "tensors") in rec.events
    assert sum(e[1] for e in rec.events if e[0] == "advance") == total
    assert any(e[0] == "note" and e[1].startswith("warning") for e in rec.events)


def test_api_result_is_the_cli_json(capsys, tmp_path, llama):
    cli = run_json(capsys, "quantize", llama, "-o", tmp_path / "cli", "--scheme", "q5_1", "--format", "dense", "-q")
    r = ms.quantize(llama, tmp_path / "api", scheme="q5_1", format="dense")
    d = r.to_dict()
    assert list(d) == list(cli)
    for key in set(d) - {"output", "seconds"}:
        assert d[key] == cli[key], key
    assert d["output"] == str(tmp_path / "api") and r.ok


def test_api_takes_a_config_and_settings_over_it(tmp_path, llama):
    cfg = QuantizeConfig(scheme="w8a8")
    r = ms.quantize(llama, tmp_path / "a", cfg, ignore=r"mlp\.down_proj")
    assert r.scheme == "w8a8" and r.quantized_tensors == 12
    with pytest.raises(SurgeonError, match="already exists"):
        ms.quantize(llama, tmp_path / "a", cfg)
    assert ms.quantize(llama, tmp_path / "a", cfg, force=True).quantized_tensors == 14
