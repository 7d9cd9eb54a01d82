"""Every Triton kernel against a device copy of the same bytes and against its torch reference, on one device.

    python benchmarks/bench_kernels.py --device cuda --json kernels.json     # on a GPU: Markdown table on stdout
    python benchmarks/bench_kernels.py --device cpu --small --json k.json    # here: a smoke run of this script

For each case of ``CASES`` (a kernel through its public op in ops/<family>/<op>.py with ``use_triton=True``):

- correctness first: the kernel's output against the spec (the torch reference; for fwht and fastfood the
  butterfly reference, since the op's own torch path is a Kronecker product), ``torch.equal`` on every output
  tensor: codes, masks, counts and values alike. The kernel is called once to compile, its outputs are freed and
  blocks of the same sizes are filled with 0xFF and freed, so that the checked call most likely lands on poisoned
  memory: a kernel that leaves part of its output unwritten shows as wrong, not as fast;
- the floor: the bytes the op must move (every input tensor read once, every output tensor written once), and a
  device copy (``dst.copy_(src)``) of that many bytes, timed the same way in the same run; "of copy" is the copy's
  time over the kernel's, so 100% means the kernel runs at the floor;
- the speed-up over the op's torch path on the same device (``use_triton=False``).

Timing: CUDA events around ``--inner`` back-to-back calls (so the Python launch overhead hides behind the GPU
work), after warm-up; the median of ``--reps`` such batches. On the CPU the interpreter runs the kernels
(TRITON_INTERPRET=1, set here): its timings are no speed, the run only checks this script and the kernels' results.

To add a kernel (K-quant GGUF blocks, FP4/FP8 block encodings are on their way): add ``Case`` rows to ``CASES``
with ``kernel`` = the module name in kernels/, one of them ``smoke=True``; tests/test_gpu_scripts.py fails while a
module in kernels/ has no smoke case. The case's ``make`` builds inputs from a value count, ``run`` calls the public
op, ``spec`` (optional) is the oracle when it is not ``run(inputs, False)``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------------
# the cases: inputs of about n values, the public op, the oracle


@dataclass(frozen=True)
class Case:
    kernel: str  # the module in kernels/ this times
    op: str  # the public op it is called through
    label: str  # what varies between rows: dtype, bits, block type
    make: Callable[[int, Any], dict]  # (about n values, device) -> inputs; tensors in it count as read bytes
    run: Callable[[dict, bool], Any]  # (inputs, use_triton) -> output tensor(s)
    spec: Callable[[dict], Any] | None = None  # the oracle; default run(inputs, False)
    smoke: bool = False  # in the --small run (one per kernel module at least)
    note: str = ""


def _torch():
    import torch

    return torch


def _square(n: int) -> tuple[int, int]:
    """A (rows, cols) of n values (a power of two), square where it can be, rows of at least 256 (two groups of 128)."""
    rows = 1 << (max(n.bit_length() - 1, 0) // 2)
    rows = max(1, min(rows, n // 256))
    return rows, max(n // rows, 1)


def _size(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}"
        b /= 1024
    return ""


def _seed(tag: str, device="cpu"):
    """A generator on the device (drawing 2^26 values on the host would take longer than the timings)."""
    torch = _torch()
    return torch.Generator(device=device).manual_seed(sum(map(ord, tag)))


def _randn(shape, dtype, device, tag: str, scale: float = 1.0):
    torch = _torch()
    return (torch.randn(shape, generator=_seed(tag, device), device=device) * scale).to(dtype)


def _threshold_inputs(dtype):
    def make(n, dev):
        from modelsurgeon.ops.prune.keys import abs_key

        torch = _torch()
        rows, cols = _square(n)
        x = _randn((rows, cols), dtype, dev, f"threshold{dtype}")
        # about half kept; in 16-bit types many values tie with the threshold, cut in the middle of each row
        t = abs_key(torch.full((rows,), 0.6745, dtype=dtype)).to(torch.int32).to(dev)
        tie = torch.full((rows,), cols // 2, dtype=torch.int64, device=dev)
        return {"x": x, "t": t, "tie": tie}

    return make


def _threshold_run(inp, use_triton):
    from modelsurgeon.ops.prune.threshold_mask import threshold_mask

    return threshold_mask(inp["x"], inp["t"], inp["tie"], use_triton=use_triton)


def _weights(dtype, tag, scale=1.0):
    def make(n, dev):
        return {"x": _randn(_square(n), dtype, dev, f"{tag}{dtype}", scale)}

    return make


def _nm_run(inp, use_triton):
    from modelsurgeon.ops.prune.nm_mask import nm_mask

    return nm_mask(inp["x"], 2, 4, use_triton=use_triton)


def _hist_run(inp, use_triton):
    from modelsurgeon.ops.prune.abs_histogram import abs_histogram

    # 2048 bins over the whole key range [0, 2^31): the widest pass of the GPU selection schedule
    return abs_histogram(inp["x"], 0, 20, 2048, use_triton=use_triton)


def _quant_run(bits, symmetric):
    def run(inp, use_triton):
        from modelsurgeon.ops.quantize.quant import group_quantize

        return group_quantize(inp["x"], bits, 128, symmetric, use_triton=use_triton)

    return run


def _dequant_inputs(dtype, symmetric):
    def make(n, dev):
        from modelsurgeon.ops.quantize.quant import group_quantize

        x = _randn(_square(n), dtype, dev, f"dequant{dtype}", 0.05)
        codes, scale, zero = group_quantize(x, 4, 128, symmetric, use_triton=False)
        return {"codes": codes, "scale": scale, "zero": zero, "dtype": dtype}

    return make


def _dequant_run(inp, use_triton):
    from modelsurgeon.ops.quantize.quant import group_dequantize

    return group_dequantize(inp["codes"], inp["scale"], inp["zero"], 128, inp["dtype"], use_triton=use_triton)


def _codes(bits):
    def make(n, dev):
        torch = _torch()
        lim = 1 << (bits - 1)
        codes = torch.randint(-lim, lim, _square(n), generator=_seed(f"codes{bits}", dev), device=dev, dtype=torch.int8)
        return {"codes": codes}

    return make


def _pack_run(bits):
    def run(inp, use_triton):
        from modelsurgeon.ops.quantize.pack import pack_int32

        return pack_int32(inp["codes"], bits, use_triton=use_triton)

    return run


def _gguf_run(qtype):
    def run(inp, use_triton):
        from modelsurgeon.ops.quantize.gguf_blocks import quantize_blocks

        return quantize_blocks(inp["x"], qtype, use_triton=use_triton)

    return run


def _fp4_run(kind):
    def run(inp, use_triton):
        from modelsurgeon.ops.quantize.fp4 import mxfp4_quantize, nvfp4_quantize

        return (nvfp4_quantize if kind == "nvfp4" else mxfp4_quantize)(inp["x"], use_triton=use_triton)

    return run


def _fp8_block_run(inp, use_triton):
    from modelsurgeon.ops.quantize.fp8_block import fp8_block_quantize

    return fp8_block_quantize(inp["x"], use_triton=use_triton)


def _fwht_inputs(dtype):
    def make(n, dev):
        L = min(n, 1 << 20)  # 2^20: two passes of the kernel; rows fill up the rest
        return {"x": _randn((max(n // L, 1), L), dtype, dev, f"fwht{dtype}")}

    return make


def _fwht_run(inp, use_triton):
    from modelsurgeon.ops.intrinsic.fwht import fwht

    return fwht(inp["x"], use_triton=use_triton)


def _fwht_spec(inp):
    from modelsurgeon.ops.intrinsic.fwht import fwht_reference

    return fwht_reference(inp["x"])


def _fastfood_inputs(transpose: bool):
    def make(n, dev):
        torch = _torch()
        L = 1 << (max(n, 2).bit_length() - 1)
        D, d = L - L // 8, min(1000, L // 4)  # D not a power of two, as in a real model; d: the subspace size
        g = _seed(f"fastfood{transpose}", dev)
        B = torch.randint(0, 2, (L,), generator=g, device=dev).float() * 2 - 1
        perm = torch.randperm(L, generator=g, device=dev)
        G = torch.randn(L, generator=g, device=dev)
        scale = 1 / math.sqrt(D * float((G.double() ** 2).sum()))
        idx = torch.int32 if L < (1 << 31) else torch.int64
        inv = torch.argsort(perm)
        inp = {"B": B, "G": G, "D": D, "d": d, "scale": scale}
        if transpose:
            inp.update(g=_randn((1, D), torch.float32, dev, "fastfood-g"), invperm=inv.to(idx))
        else:
            inp.update(x=_randn((1, d), torch.float32, dev, "fastfood-x"), perm=perm.to(idx))
        return inp

    return make


def _fastfood_run(inp, use_triton):
    from modelsurgeon.ops.intrinsic.fwht import fastfood, fastfood_t

    if "g" in inp:
        return fastfood_t(inp["g"], inp["B"], inp["invperm"], inp["G"], inp["d"], inp["scale"], use_triton=use_triton)
    return fastfood(inp["x"], inp["B"], inp["perm"], inp["G"], inp["D"], inp["scale"], use_triton=use_triton)


def _fastfood_spec(inp):
    from modelsurgeon.ops.intrinsic.fwht import fastfood_reference, fastfood_t_reference

    if "g" in inp:
        return fastfood_t_reference(inp["g"], inp["B"], inp["invperm"], inp["G"], inp["d"], inp["scale"])
    return fastfood_reference(inp["x"], inp["B"], inp["perm"], inp["G"], inp["D"], inp["scale"])


def _cases() -> list[Case]:
    torch = _torch()
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    name = {f32: "fp32", f16: "fp16", bf16: "bf16"}
    cases: list[Case] = []
    for dt in (f32, f16, bf16):
        cases.append(Case("threshold_mask", "threshold_mask", name[dt], _threshold_inputs(dt), _threshold_run, smoke=dt == bf16))
    for dt in (f32, f16, bf16):
        cases.append(Case("nm_mask", "nm_mask", f"2:4 {name[dt]}", _weights(dt, "nm"), _nm_run, smoke=dt == f16))
    for dt in (f32, f16, bf16):
        cases.append(
            Case("abs_histogram", "abs_histogram", f"{name[dt]}, 2048 bins", _weights(dt, "hist"), _hist_run, smoke=dt == f32)
        )
    for dt, bits, sym in ((f16, 4, True), (bf16, 4, True), (bf16, 4, False), (bf16, 8, True), (f32, 4, True)):
        label = f"int{bits} {'sym' if sym else 'asym'} g128 {name[dt]}"
        cases.append(
            Case(
                "quant", "group_quantize", label, _weights(dt, "quant", 0.05), _quant_run(bits, sym), smoke=dt == bf16 and not sym
            )
        )
    for dt, sym in ((f16, True), (bf16, False)):
        label = f"int4 {'sym' if sym else 'asym'} g128 -> {name[dt]}"
        cases.append(Case("quant", "group_dequantize", label, _dequant_inputs(dt, sym), _dequant_run, smoke=dt == bf16))
    for bits in (4, 8):
        cases.append(Case("pack", "pack_int32", f"int{bits}", _codes(bits), _pack_run(bits), smoke=bits == 4))
    for qtype in ("Q8_0", "Q4_0"):
        for dt in (f32, bf16):
            cases.append(
                Case(
                    "gguf_blocks",
                    "quantize_blocks",
                    f"{qtype} from {name[dt]}",
                    _weights(dt, f"gguf{qtype}", 0.02),
                    _gguf_run(qtype),
                    smoke=dt == f32,
                )
            )
    for kind in ("nvfp4", "mxfp4"):
        for dt in (f16, bf16):
            label = f"{kind} {'g16 e4m3 scales' if kind == 'nvfp4' else 'g32 e8m0 scales'} from {name[dt]}"
            cases.append(
                Case(
                    "fp4",
                    f"{kind}_quantize",
                    label,
                    _weights(dt, kind, 0.02),
                    _fp4_run(kind),
                    smoke=kind == "nvfp4" and dt == bf16,
                )
            )
    for dt in (f16, bf16):
        cases.append(
            Case(
                "fp8_block",
                "fp8_block_quantize",
                f"128x128 blocks from {name[dt]}",
                _weights(dt, "fp8b", 0.02),
                _fp8_block_run,
                smoke=dt == bf16,
            )
        )
    for dt in (f32, f16, bf16):
        # the interpreter truncates fp32 -> bf16 where a GPU rounds: the bf16 case is exact on a GPU only
        cases.append(
            Case("fwht", "fwht", f"{name[dt]}, rows of 2^20", _fwht_inputs(dt), _fwht_run, spec=_fwht_spec, smoke=dt == f32)
        )
    for transpose in (False, True):
        cases.append(
            Case(
                "fwht",
                "fastfood_t" if transpose else "fastfood",
                "fp32, d = 1000 -> D = 7/8 L",
                _fastfood_inputs(transpose),
                _fastfood_run,
                spec=_fastfood_spec,
                smoke=True,
                note="fused: 2 FWHTs, each ceil(log2(L) / 12) passes over an fp32 workspace",
            )
        )
    return cases


# ------------------------------------------------------------------------------------------------
# measuring


def _tensors(obj) -> list:
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def _sync(device) -> None:
    torch = _torch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device, reps: int, inner: int, warmup: int = 2) -> float:
    """Median seconds per call over `reps` batches of `inner` back-to-back calls."""
    torch = _torch()
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _poison(sizes: list[int], device) -> None:
    """Take blocks of these sizes, fill them with 0xFF and free them: called right after the outputs of a call were
    freed, these are (with PyTorch's caching allocator) most likely those outputs' blocks, which the next call of the
    same op gets again."""
    torch = _torch()
    blocks = [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes]
    for b in blocks:
        b.fill_(0xFF)
    _sync(device)
    del blocks


def _compare(got, want) -> tuple[bool, str]:
    torch = _torch()
    a, b = _tensors(got), _tensors(want)
    if len(a) != len(b):
        return False, f"{len(a)} output tensors, the spec gives {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False, f"output {i}: {x.dtype} {tuple(x.shape)} vs the spec's {y.dtype} {tuple(y.shape)}"
        if not torch.equal(x, y):
            bad = x != y
            if x.is_floating_point():
                bad &= ~(torch.isnan(x) & torch.isnan(y))
            n_bad = int(bad.sum())
            if n_bad:
                return False, f"output {i}: {n_bad} of {x.numel()} elements differ"
    return True, ""


def copy_time(nbytes: int, device, reps: int, inner: int) -> tuple[float, int]:
    """(seconds, bytes moved) of ``dst.copy_(src)`` that reads and writes about ``nbytes`` in all."""
    torch = _torch()
    half = max(nbytes // 2, 1)
    src = torch.empty(half, dtype=torch.uint8, device=device).fill_(7)
    dst = torch.empty_like(src)
    return time_it(lambda: dst.copy_(src), device, reps, inner), 2 * half


def measure(case: Case, n: int, device, reps: int, inner: int) -> dict:
    inp = case.make(n, device)

    def run_k():
        return case.run(inp, True)

    def run_t():
        return case.run(inp, False)

    out = run_k()  # compiles
    _sync(device)
    sizes = [t.numel() * t.element_size() for t in _tensors(out)]
    del out
    _poison(sizes, device)
    got = run_k()
    _sync(device)
    want = (case.spec or (lambda i: case.run(i, False)))(inp)
    correct, why = _compare(got, want)
    moved = _nbytes(inp) + _nbytes(got)
    shape = tuple(max(_tensors(inp), key=lambda t: t.numel() * t.element_size()).shape)
    del got, want
    t_k = time_it(run_k, device, reps, inner)
    t_t = time_it(run_t, device, max(1, reps // 2), max(1, inner // 4), warmup=1)
    inp.clear()  # free the inputs before the copy's buffers
    t_c, copied = copy_time(moved, device, reps, inner)
    return {
        "kernel": case.kernel,
        "op": case.op,
        "case": case.label,
        "shape": list(shape),
        "bytes": moved,
        "kernel_ms": t_k * 1e3,
        "kernel_gbps": moved / t_k / 1e9,
        "copy_ms": t_c * 1e3,
        "copy_gbps": copied / t_c / 1e9,
        "of_copy": (t_c / copied) / (t_k / moved),
        "torch_ms": t_t * 1e3,
        "speedup": t_t / t_k,
        "correct": correct,
        "mismatch": why,
        "note": case.note,
    }


def table(result: dict) -> str:
    """The Markdown table of a result (also used by benchmarks/gpu/summarize.py)."""
    lines = [
        "| kernel | op | case | bytes (floor) | Triton ms | GB/s | copy GB/s | of copy | torch ms | speed-up | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['op']} | {r['case']} | | | | | | | | ERROR: {r['error']} |")
            continue
        exact = "yes" if r["correct"] else f"NO: {r['mismatch']}"
        lines.append(
            f"| {r['kernel']} | {r['op']} | {r['case']} | {_size(r['bytes'])} | {r['kernel_ms']:.3f} | "
            f"{r['kernel_gbps']:.0f} | {r['copy_gbps']:.0f} | {r['of_copy']:.0%} | {r['torch_ms']:.3f} | "
            f"{r['speedup']:.1f}x | {exact} |"
        )
    return "\n".join(lines)


def _environment(device) -> dict:
    torch = _torch()
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:  # pragma: no cover - reported, not hidden
        env["triton"] = f"not importable: {e}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    else:
        env["gpu"] = "none: TRITON_INTERPRET=1 (timings are the interpreter's, not a speed)"
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the Triton interpreter)")
    ap.add_argument("--small", action="store_true", help="tiny inputs and only the smoke cases (for the CPU run)")
    ap.add_argument("--log2n", type=int, default=None, help="values per case, as a power of two (default 26; 12 with --small)")
    ap.add_argument("--reps", type=int, default=None, help="timed batches (median); default 10, 1 with --small")
    ap.add_argument("--inner", type=int, default=None, help="calls per timed batch; default 8, 1 with --small")
    ap.add_argument("--only", default="", help="comma-separated kernel modules or ops to run (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="write the result here (rewritten after every case)")
    a = ap.parse_args(argv)
    if a.device.startswith("cpu"):
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: torch sees no GPU; use --device cpu --small here", file=sys.stderr)
        return 2
    log2n = a.log2n if a.log2n is not None else (12 if a.small else 26)
    reps = a.reps or (1 if a.small else 10)
    inner = a.inner or (1 if a.small else 8)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    cases = [c for c in _cases() if (c.smoke or not a.small) and (not only or c.kernel in only or c.op in only)]
    result = {
        "command": "python benchmarks/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "environment": _environment(device),
        "interpreted": device.type == "cpu",
        "values_per_case": 1 << log2n,
        "reps": reps,
        "inner": inner,
        "rows": [],
    }
    print(f"# {result['environment']}; 2^{log2n} values per case; median of {reps} batches of {inner} calls", file=sys.stderr)
    for case in cases:
        try:
            row = measure(case, 1 << log2n, device, reps, inner)
        except Exception as e:  # one broken kernel must not hide the others
            row = {
                "kernel": case.kernel,
                "op": case.op,
                "case": case.label,
                "correct": False,
                "error": f"{type(e).__name__}: {e}",
            }
        result["rows"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(table({"rows": [row]}).splitlines()[-1], file=sys.stderr, flush=True)
        if a.json:
            a.json.write_text(json.dumps(result, indent=1))
    print(table(result))
    bad = [f"{r['op']} {r['case']}" for r in result["rows"] if not r["correct"]]
    if bad:
        print(f"bench_kernels: {len(bad)} case(s) not equal to the reference: {'; '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
