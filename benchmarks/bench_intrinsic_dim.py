"""Benchmark for `surgeon intrinsic-dim`: the FWHT, the three projections per training step, and end to end.

    python benchmarks/bench_intrinsic_dim.py            # prints a Markdown section for RESULTS.md
    python benchmarks/bench_intrinsic_dim.py --quick    # smaller sizes, for a smoke run

1. FWHT of one row of 2^16 .. 2^26 elements (fp32): the pure-torch butterfly (``fwht_reference``, the spec)
   against the Kronecker CPU path (``fwht_kron``); on CUDA also the Triton kernel against the butterfly on
   the GPU, with achieved bandwidth against a device copy (the kernel reads and writes the row once per pass).
2. Time per training step of the subspace runs, dense vs sparse vs Fastfood, at several d, on the MNIST-sized
   FC network 784-200-200-10 (D = 199,210, batch 128), against a direct step; and the projection alone at
   MiniLM's size (D = 22,713,216), where a dense P would need 91 GB at d = 1000.
3. End to end: `surgeon intrinsic-dim --task toy` and `--task digits` in a fresh process.

Everything is built in memory from fixed seeds; nothing is downloaded. Ratios are measured in the same run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see cli/intrinsic_dim.py

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _util import machine  # noqa: E402

from modelsurgeon.ops.intrinsic.fwht import fastfood, fastfood_t, fwht_kron, fwht_reference  # noqa: E402
from modelsurgeon.ops.intrinsic.projections import make_projection  # noqa: E402


def best(fn, reps: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_fwht(sizes: list[int]) -> list[str]:
    rows = [
        "| L | butterfly (reference) ms | Kronecker (CPU path) ms | speed-up | Kronecker GB/s (8 L bytes per pass) |",
        "|---|---|---|---|---|",
    ]
    for n in sizes:
        L = 1 << n
        x = torch.randn(L, generator=torch.Generator().manual_seed(0))
        reps = 3 if n <= 22 else 2
        t_ref = best(lambda: fwht_reference(x), reps)
        t_kron = best(lambda: fwht_kron(x), reps)
        passes = -(-n // 5)
        rows.append(
            f"| 2^{n} | {t_ref * 1e3:.1f} | {t_kron * 1e3:.1f} | {t_ref / t_kron:.2f}x | {passes * 8 * L / t_kron / 1e9:.2f} |"
        )
    return rows


def bench_fwht_gpu(sizes: list[int]) -> list[str]:
    from modelsurgeon.kernels.fwht import fwht_triton, pass_plan

    rows = [
        "| L | torch butterfly ms | Triton ms | speed-up | Triton GB/s | copy GB/s | of copy |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        L = 1 << n
        x = torch.randn(L, device="cuda")
        t_ref = best(lambda: fwht_reference(x), 5)
        t_tri = best(lambda: fwht_triton(x), 20)
        t_copy = best(lambda: x.clone(), 20)
        moved = len(pass_plan(L)) * 8 * L
        bw, copy_bw = moved / t_tri / 1e9, 8 * L / t_copy / 1e9
        rows.append(
            f"| 2^{n} | {t_ref * 1e3:.3f} | {t_tri * 1e3:.3f} | {t_ref / t_tri:.1f}x | {bw:.0f} | {copy_bw:.0f} | {bw / copy_bw:.0%} |"
        )
    return rows


def bench_steps(ds: list[int], dense_limit: int) -> list[str]:
    from types import SimpleNamespace

    from modelsurgeon.ops.intrinsic.models import FC, he_init
    from modelsurgeon.ops.intrinsic.problem import Problem

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)
    module = FC(784, 200, 2, 10)
    he_init(module, 0)
    task = SimpleNamespace(to=lambda dev: None)
    problem = Problem(SimpleNamespace(module=module, reinit=None, head=[], source={}), task, "cpu")
    theta0 = problem.theta0(0, 0, reinit=False)
    batch = SimpleNamespace(args=(X,), kwargs={})
    D = problem.D

    def step_fn(flat_fn, params):
        opt = torch.optim.Adam(params, lr=1e-3)

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(problem.forward(flat_fn(), batch), y)
            loss.backward()
            opt.step()

        return step

    theta = theta0.clone().requires_grad_(True)
    t_direct = best(step_fn(lambda: theta, [theta]), 20)
    rows = [
        f"FC 784-200-200-10, D = {D:,}, batch 128, one Adam step (forward + backward + update); direct step: {t_direct * 1e3:.2f} ms",
        "",
        "| d | dense ms | sparse ms | fastfood ms | dense / direct | sparse / direct | fastfood / direct | P memory dense / sparse / fastfood |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in ds:
        cells, mem = [], []
        for kind in ("dense", "sparse", "fastfood"):
            if kind == "dense" and 4 * D * d > dense_limit:
                cells.append(None)
                mem.append(f"({4 * D * d / 2**30:.1f} GiB, skipped)")
                continue
            proj = make_projection(kind, D, d, 0, "cpu")
            td = torch.zeros(d, requires_grad=True)
            cells.append(best(step_fn(lambda: theta0 + proj(td), [td]), 10))
            mem.append(f"{proj.nbytes / 2**20:.1f} MiB")
        ms = " | ".join("-" if c is None else f"{c * 1e3:.2f}" for c in cells)
        ratios = " | ".join("-" if c is None else f"{c / t_direct:.1f}x" for c in cells)
        rows.append(f"| {d:,} | {ms} | {ratios} | {' / '.join(mem)} |")
    return rows


def bench_minilm_projection(ds: list[int]) -> list[str]:
    D = 22_713_216
    rows = [
        f"Projection alone at MiniLM's size, D = {D:,} (forward P theta_d + backward P^T g):",
        "",
        "| d | sparse ms | fastfood (Kronecker FWHT, L = 2^25) ms | dense P would need |",
        "|---|---|---|---|",
    ]
    g = torch.randn(D, generator=torch.Generator().manual_seed(1))
    ff = make_projection("fastfood", D, max(ds), 0, "cpu")
    for d in ds:
        sp = make_projection("sparse", D, d, 0, "cpu")
        x = torch.randn(d, requires_grad=True)

        def run_sparse():
            sp(x).backward(g)

        t_sp = best(run_sparse, 3)
        xd = torch.randn(d)
        t_ff = best(
            lambda: (fastfood(xd, ff.B, ff.perm, ff.G, D, ff.scale), fastfood_t(g, ff.B, ff.invperm, ff.G, d, ff.scale)), 2
        )
        rows.append(f"| {d:,} | {t_sp * 1e3:.1f} | {t_ff * 1e3:.0f} | {4 * D * d / 1e9:.0f} GB |")
    return rows


def bench_cli() -> list[str]:
    rows = ["| command | wall s (incl. ~2 s start-up) | runs | d_int90 | bracket | baseline |", "|---|---|---|---|---|---|"]
    for args in (["--task", "toy"], ["--task", "digits", "--arch", "fc", "--width", "200", "--depth", "2"]):
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "modelsurgeon", "intrinsic-dim", *args, "--json", "-q"], capture_output=True, text=True
        )
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        out = json.loads(r.stdout)
        rows.append(
            f"| `surgeon intrinsic-dim {' '.join(args)}` | {dt:.1f} | {out['search']['runs']} | {out['d_int']} | "
            f"({out['bracket'][0]}, {out['bracket'][1]}] | {out['baseline']['value']:.4f} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [16, 18, 20] if args.quick else [16, 18, 20, 22, 24, 26]
    lines = [
        "## intrinsic-dim: FWHT, projections per training step, end to end",
        "",
        f"`python benchmarks/bench_intrinsic_dim.py` ({datetime.date.today().isoformat()})",
        "",
        f"machine: {machine()}, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}",
        "",
        "### FWHT, one fp32 row, CPU",
        "",
        *bench_fwht(sizes),
        "",
    ]
    if torch.cuda.is_available():
        lines += ["### FWHT on the GPU: Triton kernel", "", *bench_fwht_gpu(sizes), ""]
    else:
        lines += [
            "No GPU here: the Triton kernel only runs under TRITON_INTERPRET=1 on this machine (a correctness",
            "emulator, not a speed), so its timings and its bandwidth against a device copy await a GPU run of this",
            "script, which adds that table by itself.",
            "",
        ]
    lines += ["### Time per training step", "", *bench_steps([100, 1000] if args.quick else [100, 1000, 10_000], 1 << 30), ""]
    lines += [*bench_minilm_projection([100] if args.quick else [100, 1000]), ""]
    lines += ["### End to end", "", *bench_cli(), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
