"""`surgeon report` in the shape every command has: config -> plan -> run -> result.

cfg = ReportConfig(filter="proj\\.weight$", require=("sparsity>=0.5",))
with plan_report(cfg, "org/model") as plan:      # opens both checkpoints (headers only), checks the filter
    result = run_report(plan, progress)          # one streamed pass over the data
result.to_dict()                                 # the JSON `surgeon report --json` prints
result.ok                                        # False when a --require gate failed
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.gates import Gate
from modelsurgeon.ops.core.patterns import UserPattern
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint
from modelsurgeon.recipes.report import COMPARE_KEYS, TOTAL_KEYS, ReportConfig, parse_requirement

from .build import build_report


@dataclass
class ReportPlan:
    config: ReportConfig
    ck: Checkpoint
    other: Checkpoint | None
    pattern: UserPattern | None
    gates: list[Gate]

    @property
    def bytes_to_read(self) -> int:
        n = sum(i.nbytes for i in self.ck.infos() if self.pattern is None or self.pattern.search(i.name))
        return 2 * n if self.other is not None else n

    def close(self) -> None:
        self.ck.close()
        if self.other is not None:
            self.other.close()

    def __enter__(self) -> ReportPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ReportResult(Result):
    data: dict
    gates: list[Gate] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """One line per failed gate: the gate as written and the value it saw."""
        values = gate_values(self.data)
        out = []
        for g in self.gates:
            ok, actual = g.check(values)
            if not ok:
                out.append(f"{g.text} (actual {g.key} = {actual:.6g})")
        return out

    def to_dict(self) -> dict:
        out = dict(self.data)
        if self.gates:
            values = gate_values(self.data)
            out["requirements"] = [g.to_dict(values) for g in self.gates]
        return out


def gate_values(data: dict) -> dict:
    """The numbers a gate can name: the totals, and with a comparison its summary."""
    cmp = data.get("compare") or {}
    return {**{k: data.get(k) for k in TOTAL_KEYS}, **{k: cmp.get(k) for k in COMPARE_KEYS if k in cmp}}


def plan_report(cfg: ReportConfig, model: str, revision: str | None = None) -> ReportPlan:
    """Open MODEL (and ``cfg.compare``) lazily; nothing is read but headers."""
    gates = [parse_requirement(r, cfg.compare is not None) for r in cfg.require]
    pattern = UserPattern(cfg.filter, "--filter") if cfg.filter is not None else None
    ck = open_checkpoint(model, revision)
    try:
        other = open_checkpoint(cfg.compare) if cfg.compare else None
    except BaseException:
        ck.close()
        raise
    plan = ReportPlan(cfg, ck, other, pattern, gates)
    if pattern is not None and not any(pattern.search(n) for n in ck.names()):
        plan.close()
        raise SurgeonError(
            f"--filter '{cfg.filter}' matches no tensor of {ck.label}", "check the pattern against `surgeon report MODEL`"
        )
    return plan


def run_report(plan: ReportPlan, progress: Progress = SILENT) -> ReportResult:
    """Stream the checkpoint once; statistics, totals, the comparison, and the gates' verdicts."""
    progress.start("report", plan.bytes_to_read, "bytes")
    scale = 2 if plan.other is not None else 1
    data = build_report(plan.ck, plan.other, plan.pattern, plan.config.top, lambda n: progress.advance(n * scale))
    return ReportResult(data, plan.gates)
