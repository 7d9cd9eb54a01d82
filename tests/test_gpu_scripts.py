"""The GPU check stays ready: benchmarks/bench_kernels.py runs (on the CPU, under the Triton interpreter) with a case for
every kernel module, a wrong kernel shows as wrong, run.sh and prepare.sh parse and name their steps, and the pieces
they call (wheels.py, summarize.py) do what run.sh needs. The GPU run itself needs a lent GPU: see docs/gpu.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
KERNEL_MODULES = {p.stem for p in (ROOT / "kernels").glob("*.py") if p.stem != "__init__"}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_bench_kernels_smoke_run_covers_every_kernel(tmp_path):
    out = tmp_path / "k.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", "cpu", "--small", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["interpreted"] is True
    assert {r["kernel"] for r in rows} == KERNEL_MODULES, "add a smoke Case to benchmarks/bench_kernels.py for each kernel"
    for r in rows:
        assert "error" not in r, r
        assert r["correct"] is True, r
        assert r["bytes"] > 0 and r["kernel_ms"] > 0 and r["copy_gbps"] > 0 and r["torch_ms"] > 0, r
    # the Markdown table on stdout has one line per row
    assert sum(line.startswith("| ") for line in proc.stdout.splitlines()) == len(rows) + 1


def test_a_wrong_kernel_is_reported_not_timed_as_right():
    bk = _load(ROOT / "benchmarks" / "bench_kernels.py", "bench_kernels_under_test")

    def make(n, dev):
        return {"x": torch.arange(n, dtype=torch.float32)}

    def run(inp, use_triton):
        y = inp["x"] * 2
        if use_triton:
            y[3] += 1  # one wrong value
        return y, torch.tensor(7)

    case = bk.Case("fake", "fake_op", "fp32", make, run)
    row = bk.measure(case, 64, torch.device("cpu"), reps=1, inner=1)
    assert row["correct"] is False and "1 of 64" in row["mismatch"]
    assert row["bytes"] == 64 * 4 + 64 * 4 + 8  # the input read, the output and the count written
    good = bk.measure(bk.Case("fake", "fake_op", "fp32", make, lambda i, u: run(i, False)), 64, torch.device("cpu"), 1, 1)
    assert good["correct"] is True
    assert bk._compare(torch.zeros(2), torch.zeros(2, dtype=torch.float64))[0] is False


def test_scripts_parse_and_name_every_step():
    for script in ("run.sh", "prepare.sh"):
        proc = subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    run = (GPU / "run.sh").read_text()
    for needed in (
        "--target /tmp/site .whl/*.whl",
        "PYTHONSAFEPATH=1",  # the repository's modelsurgeon/ must not hide the installed package
        "pytest -m gpu",
        "--continue-on-collection-errors",
        "bench_kernels.py --device cuda",
        "bench_prune.py",
        "bench_quantize.py",
        "--device cpu,cuda",
        "summarize.py",
        "summary.md",
    ):
        assert needed in run, needed
    prepare = (GPU / "prepare.sh").read_text()
    assert "pip wheel" in prepare and "wheels.py" in prepare and 'carry=[".whl"]' in prepare
    assert "/.whl/" in (ROOT / ".gitignore").read_text().split()


def test_wheels_reads_requirements_for_the_gpu_machine(tmp_path):
    wh = _load(GPU / "wheels.py", "gpu_wheels_under_test")
    there = wh.device_packages()
    assert {"torch", "triton", "numpy", "safetensors", "typer", "rich", "pyyaml", "huggingface-hub", "pytest"} <= there
    assert not {"gguf", "compressed-tensors", "llama-cpp-python", "modelsurgeon"} & there
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    meta = "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: demo",
            "Requires-Dist: gguf>=0.10",
            "Requires-Dist: colorama; sys_platform == 'win32'",
            "Requires-Dist: tomli; python_version < '3.11'",
            "Requires-Dist: exceptiongroup; python_version < '3.13'",
            "Requires-Dist: pytest; extra == 'test'",
            "Requires-Dist: sphinx; extra == 'docs'",
        ]
    )
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo-1.0.dist-info/METADATA", meta)
    assert [r.name for r in wh.requirements(wheel)] == ["gguf", "exceptiongroup"]
    assert [r.name for r in wh.requirements(wheel, ("test",))] == ["gguf", "exceptiongroup", "pytest"]


def test_summary_of_a_run(tmp_path):
    (tmp_path / "env.txt").write_text("date: 2026-12-01 10:00 UTC\ngpu: NVIDIA H200, 140 GiB, 132 SMs\ntorch 2.11.0\n")
    (tmp_path / "pytest.log").write_text(
        "=== tests (limit 150s): ...\nFAILED tests/kernels/test_quant.py::test_gpu[bf16] - assert 3 == 0\n"
        "1 failed, 31 passed, 777 deselected in 40.1s\n=== tests: exit 1 after 44s\n"
    )
    row = {"kernel": "pack", "op": "pack_int32", "case": "int4", "bytes": 3 << 20, "kernel_ms": 0.01, "kernel_gbps": 300}
    row |= {"copy_gbps": 3000, "of_copy": 0.1, "torch_ms": 0.1, "speedup": 10.0, "correct": True, "mismatch": ""}
    result = {"values_per_case": 1 << 26, "reps": 10, "inner": 8, "rows": [row]}
    (tmp_path / "kernels.json").write_text(json.dumps(result))
    (tmp_path / "prune.log").write_text("=== prune ...\n| checkpoint | what |\n|---|---|\nTraceback: boom\n")
    status = tmp_path / "status"
    status.write_text("tests 1 44\nkernels 0 60\nprune 124 90\n")
    proc = subprocess.run([sys.executable, str(GPU / "summarize.py"), str(tmp_path), str(status)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    assert md.startswith("## GPU check: NVIDIA H200, 2026-12-01 10:00 UTC")
    assert "| tests | 1 failed, 31 passed, 777 deselected in 40.1s (exit 1) | 44 |" in md
    assert "FAILED tests/kernels/test_quant.py::test_gpu[bf16]" in md
    assert "| pack | pack_int32 | int4 | 3 MiB | 0.010 | 300 | 3000 | 10% | 0.100 | 10.0x | yes |" in md
    assert "| prune | ran out of its time limit | 90 |" in md and "Traceback: boom" in md
