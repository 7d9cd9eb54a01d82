"""`surgeon prune --scope global` against torch.nn.utils.prune.global_unstructured and the I/O floor.

Run: python benchmarks/bench_prune.py [--mb 384] [--repeat 3]
Writes benchmarks/work/prune-bench/ (ignored by git) and prints Markdown tables.

Three checkpoints of about the same size: fp32 in few tensors, fp32 in 10x more tensors (memory must not
grow with the tensor count), and bf16 (one histogram pass instead of two). For each, in child processes:

- the interpreter floor: python + import torch, safetensors;
- the I/O floor: safetensors load_file + save_file of the same checkpoint (read + write);
- ours: `surgeon prune SRC -o DST --sparsity 0.5 --scope global` (read, 1-2 statistics passes, apply, write);
- torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=0.5) on the same tensors as parameters,
  then prune.remove (bake the masks): the prune step alone is timed inside the child, and the whole child
  (load, prune, save) from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import WORK, machine, python_snippet, run_measured  # noqa: E402

TORCH_PRUNE = r"""
import json, sys, time
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import prune
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
sd = load_file(src)
mods = []
for name, t in sd.items():
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(t, requires_grad=False)
    mods.append((name, m))
del sd
t1 = time.perf_counter()
prune.global_unstructured([(m, "weight") for _, m in mods], pruning_method=prune.L1Unstructured, amount=0.5)
for _, m in mods:
    prune.remove(m, "weight")
t2 = time.perf_counter()
save_file({n: m.weight.data for n, m in mods}, dst)
t3 = time.perf_counter()
zeros = sum(int((m.weight == 0).sum()) for _, m in mods)
print(json.dumps({"load": t1 - t0, "prune": t2 - t1, "save": t3 - t2, "zeros": zeros}))
"""

READ_WRITE = "import sys; from safetensors.torch import load_file, save_file; save_file(load_file(sys.argv[1]), sys.argv[2])"


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, stdout) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return dt, usage.ru_maxrss / 1024, out


def best(n: int, fn):
    runs = [fn() for _ in range(n)]
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2]


def build(path, count: int, rows: int, cols: int, dtype: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    run_measured(python_snippet(
        "import torch; from safetensors.torch import save_file; g = torch.Generator().manual_seed(0)\n"
        f"t = {{f'layers.{{i}}.mlp.weight': (torch.randn({rows}, {cols}, generator=g) * (1 + i % 7) / 50).to(torch.{dtype}) for i in range({count})}}\n"
        f"save_file(t, {str(path)!r})"
    ))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=384, help="checkpoint size in MiB (fp32 cases)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    root = WORK / "prune-bench"
    elems = a.mb * 2**20 // 4
    cases = [
        ("fp32, 48 tensors", 48, "float32"),
        ("fp32, 480 tensors", 480, "float32"),
        ("bf16, 48 tensors", 48, "bfloat16"),
    ]
    print(f"machine: {machine()}")
    print(f"{a.repeat} runs each, best time, worst peak RSS, warm page cache; sparsity 0.5, global magnitude\n")
    base_t, base_rss, _ = best(a.repeat, lambda: run_child(python_snippet("import torch, safetensors.torch")))
    print(f"interpreter floor (python + import torch, safetensors): {base_t:.2f} s, {base_rss:.0f} MiB\n")
    print("| checkpoint | MiB | what | wall s | minus import s | MB/s | peak RSS MiB | RSS above interpreter MiB |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for label, count, dtype in cases:
        cols = 1024
        rows = elems // count // cols
        src = root / f"{count}-{dtype}" / "model.safetensors"
        build(src, count, rows, cols, dtype)
        size_mb = src.stat().st_size / 2**20
        dst = root / "out"
        dst.mkdir(exist_ok=True)
        run_child(python_snippet(f"open({str(src)!r}, 'rb').read()"))  # warm the page cache
        rw = best(a.repeat, lambda: run_child(python_snippet(READ_WRITE) + [str(src), str(dst / "rw.safetensors")]))
        ours = best(a.repeat, lambda: run_child([sys.executable, "-m", "modelsurgeon", "prune", str(src.parent), "-o", str(dst / "ours"),
                                                  "--sparsity", "0.5", "--scope", "global", "-q", "--force", "--json"]))
        tp = best(a.repeat, lambda: run_child(python_snippet(TORCH_PRUNE) + [str(src), str(dst / "torch.safetensors")]))
        inner = json.loads(tp[2])
        ours_json = json.loads(ours[2])
        assert ours_json["zeros"] == inner["zeros"] or abs(ours_json["zeros"] - inner["zeros"]) <= 1, (ours_json["zeros"], inner["zeros"])
        rows_out = [
            ("read + write (safetensors load_file, save_file)", rw[0], rw[1]),
            ("surgeon prune --scope global", ours[0], ours[1]),
            ("torch global_unstructured: load + prune + save", tp[0], tp[1]),
        ]
        for what, t, rss in rows_out:
            net = max(t - base_t, 1e-9)
            print(f"| {label} | {size_mb:.0f} | {what} | {t:.2f} | {net:.2f} | {size_mb / net:.0f} | {rss:.0f} | {rss - base_rss:.0f} |")
        print(f"| {label} | {size_mb:.0f} | torch global_unstructured: prune step only (in-process) | {inner['prune']:.2f} | | {size_mb / inner['prune']:.0f} | | |")
        summary.append((label, size_mb, rw, ours, tp, inner))
    print()
    for label, size_mb, rw, ours, tp, inner in summary:
        net_ours, net_rw, net_tp = ours[0] - base_t, rw[0] - base_t, tp[0] - base_t
        print(f"- {label}: ours vs torch prune step alone {inner['prune'] / net_ours:.1f}x faster; "
              f"vs torch end to end {net_tp / net_ours:.1f}x; throughput vs read+write {net_rw / net_ours:.2f}x; "
              f"RSS above interpreter: ours {ours[1] - base_rss:.0f} MiB, torch {tp[1] - base_rss:.0f} MiB")


if __name__ == "__main__":
    main()
