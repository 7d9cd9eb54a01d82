"""A/B: the same surgeon commands under two installs of modelsurgeon, interleaved, so load on the machine
hits both alike. Use it to show that a change (a refactor, a new default) did not slow anything down.

    python benchmarks/bench_versions.py --a /path/to/old/.venv/bin/surgeon --b .venv/bin/surgeon --repeat 5

Inputs are built once under benchmarks/work/versions/ (ignored by git): a 72 MiB fp32 checkpoint of 48
linear weights and the built-in MiniLM. Prints a Markdown table: per command the median and best wall time
of A and B and the ratio B/A of the medians (below 1: B is faster).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import WORK, machine, python_snippet, run_measured  # noqa: E402

HERE = WORK / "versions"


def build_inputs() -> dict[str, Path]:
    ck = HERE / "linear72"
    if not (ck / "model.safetensors").exists():
        ck.mkdir(parents=True, exist_ok=True)
        code = (
            "import torch; from safetensors.torch import save_file; g = torch.Generator().manual_seed(0); "
            "save_file({f'model.layers.{i}.mlp.up_proj.weight': torch.randn(512, 768, generator=g) for i in range(48)}, "
            f"'{ck}/model.safetensors')"
        )
        run_measured(python_snippet(code))
    return {"linear72": ck}


def commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    lin = str(inputs["linear72"])
    return {
        "report linear72": ["report", lin, "--json", "-q"],
        "prune linear72 global 0.5": ["prune", lin, "-o", str(out), "--sparsity", "0.5", "--scope", "global", "--force", "-q"],
        "prune linear72 2:4": ["prune", lin, "-o", str(out), "--pattern", "2:4", "--force", "-q"],
        "quantize linear72 w4a16": ["quantize", lin, "-o", str(out), "--scheme", "w4a16", "--force", "-q"],
        "merge minilm linear x2": [
            "merge", "--method", "linear", "minilm", "minilm", "-o", str(out), "--force", "-q",
        ],
        "prune minilm 0.5": ["prune", "minilm", "-o", str(out), "--sparsity", "0.5", "--force", "-q"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="the surgeon executable of the baseline install")
    ap.add_argument("--b", required=True, help="the surgeon executable of the install under test")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    inputs = build_inputs()
    out = HERE / "out"
    times: dict[tuple[str, str], list[float]] = {}
    cmds = commands(inputs, out)
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            for who, exe in (("a", args.a), ("b", args.b)):
                dt, _rss = run_measured([exe, *cmd], env={"OMP_WAIT_POLICY": "PASSIVE"})
                times.setdefault((name, who), []).append(dt)
                shutil.rmtree(out, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"A = {args.a}\nB = {args.b}\n{args.repeat} interleaved runs each, wall seconds of the whole process\n")
    print("| command | A median | A best | B median | B best | B/A (medians) |")
    print("|---|---|---|---|---|---|")
    for name in cmds:
        a, b = times[(name, "a")], times[(name, "b")]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {name} | {ma:.2f} | {min(a):.2f} | {mb:.2f} | {min(b):.2f} | {mb / ma:.2f} |")


if __name__ == "__main__":
    main()
