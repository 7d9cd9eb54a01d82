"""`surgeon run` (merge -> prune 2:4 -> w4a16, fused into one streaming pass) against the three commands one
after another with the intermediates on disk, and against `surgeon run --keep-intermediate` (the same steps as
three passes in one process): wall time and peak RSS of each child, and that the outputs hold the same tensors.

    python benchmarks/bench_run.py --layers 4 --hidden 1024

The fused run reads each input tensor once and writes each output tensor once (tests/cli/test_run.py counts
the bytes read); the three commands also write the merged and the pruned model and read them back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from _util import SAME_TENSORS, WORK, run_measured
from bench_quantize import build

SURGEON = [sys.executable, "-m", "modelsurgeon"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    root = WORK / f"run-{args.layers}-{args.hidden}"
    shutil.rmtree(root, ignore_errors=True)
    for name in ("base", "a", "b"):
        build(root / name, args.layers, args.hidden)  # the same init: a and b stand in for fine-tunes
    (root / "merge.yaml").write_text(
        f"merge_method: ties\nbase_model: {root / 'base'}\nmodels:\n"
        f"  - model: {root / 'a'}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {root / 'b'}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
    )
    body = (root / "merge.yaml").read_text().splitlines()
    (root / "run.yaml").write_text(
        "version: 1\nsteps:\n  - merge:\n"
        + "\n".join("      " + x for x in body)
        + "\n  - prune: {pattern: '2:4'}\n  - quantize: {scheme: w4a16}\n"
    )
    t1, r1 = run_measured([*SURGEON, "merge", str(root / "merge.yaml"), "-o", str(root / "m1"), "-q"])
    t2, r2 = run_measured([*SURGEON, "prune", str(root / "m1"), "-o", str(root / "m2"), "--pattern", "2:4", "-q"])
    t3, r3 = run_measured([*SURGEON, "quantize", str(root / "m2"), "-o", str(root / "hand"), "--scheme", "w4a16", "-q"])
    tr, rr = run_measured([*SURGEON, "run", str(root / "run.yaml"), "-o", str(root / "run"), "-q"])
    tk, rk = run_measured([*SURGEON, "run", str(root / "run.yaml"), "-o", str(root / "kept"), "--keep-intermediate", "-q"])
    run_measured([sys.executable, "-c", SAME_TENSORS, str(root / "hand"), str(root / "run"), str(root / "kept")])
    size = sum(f.stat().st_size for f in (root / "base").glob("*.safetensors")) / 2**20
    print(f"model {size:.0f} MiB per input ({args.layers} layers, hidden {args.hidden}, bf16)")
    print("| what | seconds | peak RSS MiB |\n|---|---|---|")
    print(f"| surgeon merge | {t1:.1f} | {r1:.0f} |\n| surgeon prune --pattern 2:4 | {t2:.1f} | {r2:.0f} |")
    print(
        f"| surgeon quantize --scheme w4a16 | {t3:.1f} | {r3:.0f} |\n| three commands | {t1 + t2 + t3:.1f} | {max(r1, r2, r3):.0f} |"
    )
    print(f"| surgeon run --keep-intermediate (three passes, one process) | {tk:.1f} | {rk:.0f} |")
    print(f"| surgeon run (one fused pass) | {tr:.1f} | {rr:.0f} |")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("outputs: the same tensors")


if __name__ == "__main__":
    main()
