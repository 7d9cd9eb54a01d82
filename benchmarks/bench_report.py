"""`surgeon report` against a plain safetensors load of the same file, and its peak memory.

Run: python benchmarks/bench_report.py [--big-mb 1024] [--small 200]
Writes benchmarks/work/report-bench/ (ignored by git) and prints a Markdown table.

The checkpoint has one large tensor and many small ones, so peak RSS shows whether memory follows
the largest tensor (or less: report reads in 64 MB chunks) rather than the model size.
"""

from __future__ import annotations

import argparse
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import WORK, best_of, machine, python_snippet, run_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    folder = WORK / "report-bench"
    path = folder / "model.safetensors"
    if not path.exists():  # built in a child: this process must stay small (see _util.machine)
        folder.mkdir(parents=True, exist_ok=True)
        rows = a.big_mb * 2**20 // 4 // 4096
        run_measured(
            python_snippet(
                "import torch; from safetensors.torch import save_file; g = torch.Generator().manual_seed(0)\n"
                f"t = {{'big.weight': torch.randn({rows}, 4096, generator=g)}}\n"
                f"t.update({{f'small.{{i}}.weight': torch.randn(256, 1024, generator=g) for i in range({a.small})}})\n"
                f"save_file(t, {str(path)!r})"
            )
        )
    size_mb = path.stat().st_size / 2**20
    baseline = python_snippet("import torch, safetensors.torch")
    # load_file maps the file lazily; one sum per tensor makes it actually read every byte
    load = python_snippet(f"import safetensors.torch as s; d = s.load_file({str(path)!r}); [t.sum() for t in d.values()]")
    report = [sys.executable, "-m", "modelsurgeon", "report", str(folder), "--json", "-q"]
    run_measured(load)  # warm the page cache
    t_base, rss_base = best_of(a.repeat, lambda: run_measured(baseline))
    t_load, rss_load = best_of(a.repeat, lambda: run_measured(load))
    t_rep, rss_rep = best_of(a.repeat, lambda: run_measured(report))
    big_mb = a.big_mb
    print(f"machine: {machine()}")
    print(
        f"checkpoint: {size_mb:.0f} MiB, one {big_mb} MiB tensor + {a.small} x 1 MiB; {a.repeat} runs, best time, worst RSS, warm page cache\n"
    )
    print("| what | wall s | minus import s | GB/s | peak RSS MiB | RSS above interpreter MiB |")
    print("|---|---|---|---|---|---|")
    for label, t, rss in [
        ("python + import torch, safetensors", t_base, rss_base),
        ("safetensors load_file + one sum per tensor", t_load, rss_load),
        ("surgeon report --json", t_rep, rss_rep),
    ]:
        net = max(t - t_base, 1e-9)
        gbs = size_mb / 1024 / net if t is not t_base else float("nan")
        print(f"| {label} | {t:.2f} | {t - t_base:.2f} | {gbs:.2f} | {rss:.0f} | {rss - rss_base:.0f} |")
    print(
        f"\nreport / load time (net of imports): {(t_rep - t_base) / (t_load - t_base):.2f}x; "
        f"report RSS above interpreter: {(rss_rep - rss_base) / big_mb:.2f}x the largest tensor"
    )


if __name__ == "__main__":
    main()
