"""`surgeon prune --scope global` against torch.nn.utils.prune.global_unstructured and the I/O floor.

Run: python benchmarks/bench_prune.py [--mb 256] [--repeat 2] [--device cpu,cuda] [--cases bf16]
Writes benchmarks/work/prune-bench/ (ignored by git) and prints Markdown tables.

``--device`` (default ``auto``) takes a comma-separated list: ours and torch's prune run once per device (torch's
on the tensors moved there), and the outputs of ours must be the same on every device (checked here).
``--cases`` keeps some of the checkpoints: fp32-48, fp32-480, bf16-48 (comma-separated).

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
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import SAME_TENSORS, WORK, machine, python_snippet, run_measured  # noqa: E402

TORCH_PRUNE = r"""
import json, sys, time
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import prune
src, dst, dev = sys.argv[1], sys.argv[2], sys.argv[3]
if dev == "auto":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
if dev.startswith("cuda"):
    torch.ones(1, device=dev)  # CUDA context outside the timed region
t0 = time.perf_counter()
sd = load_file(src, device=dev)
mods = []
for name, t in sd.items():
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(t, requires_grad=False)
    mods.append((name, m))
del sd
sync()
t1 = time.perf_counter()
prune.global_unstructured([(m, "weight") for _, m in mods], pruning_method=prune.L1Unstructured, amount=0.5)
for _, m in mods:
    prune.remove(m, "weight")
sync()
t2 = time.perf_counter()
save_file({n: m.weight.data.cpu() for n, m in mods}, dst)
t3 = time.perf_counter()
zeros = sum(int((m.weight == 0).sum()) for _, m in mods)
print("BENCH " + json.dumps({"work": t3 - t0, "prune": t2 - t1, "zeros": zeros}), file=sys.stderr)
"""

READ_WRITE = r"""
import json, sys, time
from safetensors.torch import load_file, save_file
t0 = time.perf_counter()
save_file(load_file(sys.argv[1]), sys.argv[2])
print("BENCH " + json.dumps({"work": time.perf_counter() - t0}), file=sys.stderr)
"""

# the command in-process, its imports done before the clock starts (the wall time includes them)
OURS = r"""
import json, sys, time
from modelsurgeon.cli.main import main
import modelsurgeon.ops.prune.run, modelsurgeon.ops.io.output
from modelsurgeon.kernels import triton_importable
triton_importable()
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print("BENCH " + json.dumps({"work": time.perf_counter() - t0, "rc": rc}), file=sys.stderr)
"""

# the same read and write path as ours, without pruning: what our reader and writer cost
OUR_COPY = r"""
import json, sys, time
import torch
from modelsurgeon.ops.io.checkpoint import open_checkpoint
from modelsurgeon.ops.io.output import write_folder
from modelsurgeon.ops.io.output import OutputDir
from modelsurgeon.ops.io.writer import TensorSpec
t0 = time.perf_counter()
with open_checkpoint(sys.argv[1]) as ck:
    specs = [TensorSpec(i.name, i.shape, i.torch_dtype) for i in ck.infos()]
    write_folder(OutputDir(sys.argv[2], force=True), specs, ck.iter_tensors(), source=ck, command="copy", max_shard_size=10**12)
print("BENCH " + json.dumps({"work": time.perf_counter() - t0}), file=sys.stderr)
"""


def run_child(cmd: list[str]) -> tuple[float, float, dict, str]:
    """(wall seconds, peak RSS MiB, the child's BENCH record, stdout) of one child process."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        dt = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(), fe.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    rec = {}
    for line in err.splitlines():
        if line.startswith("BENCH "):
            rec = json.loads(line[6:])
    return dt, usage.ru_maxrss / 1024, rec, out


def best(n: int, fn):
    """Best work time (and wall time) of n runs, worst peak RSS, the best run's record and stdout."""
    runs = [fn() for _ in range(n)]
    top = min(runs, key=lambda r: r[2].get("work", r[0]))
    return {
        "wall": min(r[0] for r in runs),
        "work": top[2].get("work", top[0]),
        "rss": max(r[1] for r in runs),
        "rec": top[2],
        "out": top[3],
    }


def build(path, count: int, rows: int, cols: int, dtype: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    run_measured(
        python_snippet(
            "import torch; from safetensors.torch import save_file; g = torch.Generator().manual_seed(0)\n"
            f"t = {{f'layers.{{i}}.mlp.weight': (torch.randn({rows}, {cols}, generator=g) * (1 + i % 7) / 50).to(torch.{dtype}) for i in range({count})}}\n"
            f"save_file(t, {str(path)!r})"
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="checkpoint size in MiB (fp32 cases)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="auto", help="comma-separated devices for ours and torch's prune: auto, cpu, cuda")
    ap.add_argument("--cases", default="", help="comma-separated checkpoints to run: fp32-48, fp32-480, bf16-48 (default: all)")
    a = ap.parse_args()
    devices = [d.strip() for d in a.device.split(",") if d.strip()]
    root = WORK / "prune-bench"
    elems = a.mb * 2**20 // 4
    cases = [
        ("fp32, 48 tensors", 48, "float32"),
        ("fp32, 480 tensors", 480, "float32"),
        ("bf16, 48 tensors", 48, "bfloat16"),
    ]
    key = lambda c: f"{c[0].split(',')[0]}-{c[1]}"  # "fp32, 48 tensors" -> "fp32-48"
    wanted = {w.strip() for w in a.cases.split(",") if w.strip()}
    if wanted - {key(c) for c in cases}:
        ap.error(f"unknown cases {sorted(wanted - {key(c) for c in cases})}; known: {', '.join(key(c) for c in cases)}")
    cases = [c for c in cases if not wanted or key(c) in wanted]
    print(f"machine: {machine()}")
    print(f"{a.repeat} runs each: best time, worst peak RSS; warm page cache; sparsity 0.5, global magnitude.")
    print("work s: measured inside the child after its imports; wall s: the whole child, Python start and imports included.\n")
    base = best(a.repeat, lambda: run_child(python_snippet("import torch, safetensors.torch")))
    ours_base = best(a.repeat, lambda: run_child(python_snippet(OURS.split("t0 =")[0])))
    print(
        f"interpreter (python + import torch, safetensors): {base['wall']:.2f} s, {base['rss']:.0f} MiB; "
        f"with modelsurgeon's imports (triton included): {ours_base['wall']:.2f} s, {ours_base['rss']:.0f} MiB\n"
    )
    print("| checkpoint | what | work s | MB/s | wall s | peak RSS MiB | RSS above interpreter MiB |")
    print("|---|---|---|---|---|---|---|")
    summary, differ = [], []
    for label, count, dtype in cases:
        rows = elems // count // 1024
        src = root / f"{a.mb}mb-{count}-{dtype}" / "model.safetensors"
        build(src, count, rows, 1024, dtype)
        mb = src.stat().st_size / 2**20
        dst = root / "out"
        dst.mkdir(exist_ok=True)
        run_child(python_snippet(f"open({str(src)!r}, 'rb').read()"))  # warm the page cache
        rw = best(a.repeat, lambda: run_child(python_snippet(READ_WRITE) + [str(src), str(dst / "rw.safetensors")]))
        copy = best(a.repeat, lambda: run_child(python_snippet(OUR_COPY) + [str(src.parent), str(dst / "copy")]))
        ours, tp = {}, {}
        for dev in devices:
            ours[dev] = best(
                a.repeat,
                lambda: run_child(
                    python_snippet(OURS)
                    + [
                        "prune",
                        str(src.parent),
                        "-o",
                        str(dst / f"ours-{dev}"),
                        "--sparsity",
                        "0.5",
                        "--scope",
                        "global",
                        "--device",
                        dev,
                        "-q",
                        "--force",
                        "--json",
                    ]
                ),
            )
            tp[dev] = best(
                a.repeat,
                lambda: run_child(python_snippet(TORCH_PRUNE) + [str(src), str(dst / f"torch-{dev}.safetensors"), dev]),
            )
            zeros = json.loads(ours[dev]["out"])["zeros"]
            if abs(zeros - tp[dev]["rec"]["zeros"]) > 1:  # torch rounds half to even, we round half up
                raise RuntimeError(f"ours pruned {zeros} on {dev}, torch {tp[dev]['rec']['zeros']}")
        same = None
        if len(devices) > 1:  # in a child: this process stays small (see _util.machine)
            try:
                run_child(python_snippet(SAME_TENSORS) + [str(dst / f"ours-{dev}") for dev in devices])
                same = True
            except RuntimeError:
                same = False
                differ.append(label)
        table = [
            ("read + write: safetensors load_file + save_file", rw),
            ("read + write through our reader and writer (no pruning)", copy),
        ]
        for dev in devices:
            tag = "" if devices == ["auto"] else f" --device {dev}"
            table += [
                (f"**surgeon prune --scope global{tag}**", ours[dev]),
                (f"torch global_unstructured{tag}: load + prune + save", tp[dev]),
            ]
        for what, r in table:
            print(
                f"| {label} | {what} | {r['work']:.2f} | {mb / r['work']:.0f} | {r['wall']:.2f} | {r['rss']:.0f} | {r['rss'] - base['rss']:.0f} |"
            )
        for dev in devices:
            tag = "" if devices == ["auto"] else f" --device {dev}"
            print(
                f"| {label} | torch global_unstructured{tag}: the prune step alone | {tp[dev]['rec']['prune']:.2f} | {mb / tp[dev]['rec']['prune']:.0f} | | | |"
            )
        if same is not None:
            print(
                f"| {label} | outputs of ours on {' and '.join(devices)} | {'identical' if same else '**DIFFERENT**'} | | | | |"
            )
        summary += [(f"{label}, {dev}", mb, rw, copy, ours[dev], tp[dev]) for dev in devices]
    print()
    for label, mb, rw, copy, ours, tp in summary:  # noqa: B007
        print(
            f"- {label} ({mb:.0f} MiB): ours {tp['rec']['prune'] / ours['work']:.1f}x faster than torch's prune step alone "
            f"and {tp['work'] / ours['work']:.1f}x faster than torch load + prune + save; "
            f"throughput {rw['work'] / ours['work']:.2f}x that of safetensors read + write "
            f"({copy['work'] / ours['work']:.2f}x our own read + write); "
            f"peak RSS above the interpreter: ours {ours['rss'] - base['rss']:.0f} MiB "
            f"({ours['rss'] - ours_base['rss']:.0f} MiB above its own imports), torch {tp['rss'] - base['rss']:.0f} MiB"
        )
    if differ:
        sys.exit(f"bench_prune: the output of surgeon prune depends on the device for {', '.join(differ)}")


if __name__ == "__main__":
    main()
