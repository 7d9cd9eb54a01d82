"""Fold the logs of run.sh into one Markdown section, ready to paste at the end of benchmarks/RESULTS.md.

    python3 benchmarks/gpu/summarize.py OUT STATUS > OUT/summary.md

OUT holds env.txt, pytest.log, kernels.json, prune.log, quantize.log (any may be missing: that step did not run);
STATUS has one line per step that ran: "name exit-code seconds".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for bench_kernels.table

STEP_LOG = {"tests": "pytest.log", "kernels": "kernels.log", "prune": "prune.log", "quantize": "quantize.log"}


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def body(log: str) -> list[str]:
    """The log without run.sh's own === lines."""
    return [line for line in log.splitlines() if not line.startswith("=== ")]


def pytest_result(log: str) -> str:
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b.*?)\s*=*$", log, re.M)
    return found[-1] if found else "no pytest summary line (killed, or it did not start)"


def tail(lines: list[str], n: int = 25) -> list[str]:
    return ["```", *lines[-n:], "```"]


def main() -> int:
    out, status_file = Path(sys.argv[1]), Path(sys.argv[2])
    status = []
    for line in read(status_file).splitlines():
        parts = line.split()
        if len(parts) == 3:
            status.append((parts[0], int(parts[1]), int(parts[2])))
    env = read(out / "env.txt").splitlines()
    gpu = next((line.split(":", 1)[1].strip() for line in env if line.startswith("gpu:")), "unknown GPU")
    date = next((line.split(":", 1)[1].strip() for line in env if line.startswith("date:")), "")
    lines = [
        f"## GPU check: {gpu.split(',')[0]}, {date}",
        "",
        "`bash benchmarks/gpu/run.sh` on the lent GPU machine, with the wheels of `bash benchmarks/gpu/prepare.sh`.",
        "",
        "```",
        *[line for line in env if not line.startswith(("date:", "|", "+", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))],
        "```",
        "",
        "| step | result | seconds |",
        "|---|---|---|",
    ]
    for name, rc, secs in status:
        if name == "tests":
            what = pytest_result(read(out / "pytest.log")) + ("" if rc == 0 else f" (exit {rc})")
        elif rc in (124, 137):
            what = "ran out of its time limit"
        else:
            what = "ok" if rc == 0 else f"FAILED (exit {rc})"
        lines.append(f"| {name} | {what} | {secs} |")
    lines.append("")
    done = {name: rc for name, rc, _ in status}

    if "tests" in done:
        log = body(read(out / "pytest.log"))
        bad = [line for line in log if line.startswith(("FAILED", "ERROR"))]
        lines += ["### gpu-marked tests", "", f"`python3 -m pytest -m gpu tests/`: {pytest_result(read(out / 'pytest.log'))}", ""]
        if bad:
            lines += ["```", *bad, "```", ""]
        if done["tests"] != 0 and not bad:
            lines += tail(log) + [""]

    if "kernels" in done:
        lines += [
            "### Triton kernels: bandwidth against a device copy, speed-up over the torch path",
            "",
            "`python3 benchmarks/bench_kernels.py --device cuda`: bytes = the floor (inputs read once, outputs written",
            "once); of copy = the copy's time per byte over the kernel's (100% = at the floor); speed-up = the op with",
            "`use_triton=False` on the same GPU over the op with the kernel; exact = `torch.equal` with the reference.",
            "",
        ]
        try:
            result = json.loads(read(out / "kernels.json"))
            from bench_kernels import table

            lines += [
                f"{result['values_per_case']:,} values per case, median of {result['reps']} batches of "
                f"{result['inner']} back-to-back calls (CUDA events).",
                "",
                table(result),
                "",
            ]
            if done["kernels"] != 0:
                lines += tail(body(read(out / "kernels.log")), 10) + [""]
        except (ValueError, KeyError):
            lines += ["No kernels.json:", "", *tail(body(read(out / "kernels.log"))), ""]

    for name, title in (("prune", "prune: --device cpu and cuda"), ("quantize", "quantize: --device cpu and cuda")):
        if name not in done:
            continue
        log = body(read(out / f"{name}.log"))
        lines += [f"### {title}", ""]
        if done[name] == 0:
            lines += [*log, ""]
        else:
            lines += ["Failed or cut short; the end of its log:", "", *tail(log), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
