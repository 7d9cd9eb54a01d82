"""Calibrated methods against llm-compressor: same model, same calibration sequences, same evaluation.

    python benchmarks/bench_calibrated_peer.py --llmc-python /tmp/venv-llmc/bin/python [--append]

llm-compressor (PyPI ``llmcompressor``) must be installed in a separate environment (it pins its own
transformers and compressed-tensors): ``python -m venv /tmp/venv-llmc && /tmp/venv-llmc/bin/pip install
llmcompressor``. The model is SmolLM2-135M-Instruct as bench_calibrated.py makes it (fp32 safetensors). The
calibration sequences are cut once by our code (``--samples`` x ``--seqlen`` tokens of
tests/data/sherlock_holmes.txt, seed 0) and handed to llm-compressor as a tokenized dataset, so both tools see
the same tokens. Each run is a child process: wall time and peak RSS (``ru_maxrss``) cover everything it does,
loading the model and writing the output included. llm-compressor runs ``oneshot`` on the CPU (its sequential
pipeline, one decoder layer calibrated at a time, the whole model in memory) and saves with ``save_pretrained``
(GPTQ: compressed-tensors ``pack-quantized``, pruning: dense). Every output, ours and theirs, is then scored
by the same code (``surgeon eval``: perplexity on the first ``--tokens`` tokens of Pride and Prejudice, KL
divergence and top-1 agreement against the dense model); llm-compressor's GPTQ checkpoint is read through our
compressed-tensors reader, the same decoding transformers applies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _util import WORK, machine, run_measured

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "tests" / "data" / "sherlock_holmes.txt"
HELD_OUT = ROOT / "tests" / "data" / "pride_and_prejudice_ch1-5.txt"

# the peer's side, run by the llm-compressor environment's python: MODEL IDS_JSON METHOD OUT
PEER = r"""
import json, shutil, sys
from pathlib import Path
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

model_dir, ids_json, method, out = sys.argv[1:5]
ids = json.loads(Path(ids_json).read_text())
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
ignore = ["re:.*lm_head"]
if method == "gptq":
    w4g64 = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}
    recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": w4g64}}, ignore=ignore,
                          block_size=128, dampening_frac=0.01, actorder="static")
elif method == "sparsegpt":
    recipe = SparseGPTModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=ignore,
                               block_size=128, dampening_frac=0.01)
else:
    recipe = WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=ignore)
oneshot(model=model, processor=tok, dataset=ds, recipe=recipe, num_calibration_samples=len(ids),
        max_seq_length=len(ids[0]), shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=(method == "gptq"))
tok.save_pretrained(out)
"""

OURS = r"""
import json, sys
import modelsurgeon as ms
model, method, out, calib = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if method == "gptq":
    ms.quantize(model, out, scheme="w4a16", group_size=64, method="gptq", calib=calib, device="cpu", force=True)
else:
    ms.prune(model, out, sparsity=0.5, method=method, calib=calib, device="cpu", force=True)
"""


def calibration_batch(model: Path, samples: int, seqlen: int) -> list[list[int]]:
    """The token sequences our calibration takes (the plan's own functions), for the peer to take too."""
    from modelsurgeon.ops.calibrate.data import calibration_ids, load_tokenizer, read_text, tokenize

    ids = tokenize(load_tokenizer(model, str(model)), read_text(CALIB), special=False)
    return calibration_ids(ids, samples, seqlen, 0, str(CALIB)).tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llmc-python", default="/tmp/venv-llmc/bin/python")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--methods", default="wanda,sparsegpt,gptq")
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_calibrated import smollm2

    model = smollm2()
    out = WORK / "peer"
    out.mkdir(parents=True, exist_ok=True)
    ids_json = out / "calib_ids.json"
    ids_json.write_text(json.dumps(calibration_batch(model, args.samples, args.seqlen)))
    calib = json.dumps({"file": str(CALIB), "samples": args.samples, "seqlen": args.seqlen})
    measured, failed = {}, {}
    for method in args.methods.split(","):
        ours, theirs = out / f"ours-{method}", out / f"llmc-{method}"
        for tool, cmd in [
            ("modelsurgeon", [sys.executable, "-c", OURS, str(model), method, str(ours), calib]),
            ("llm-compressor", [args.llmc_python, "-c", PEER, str(model), str(ids_json), method, str(theirs)]),
        ]:
            try:
                measured[(tool, method)] = run_measured(cmd)
            except RuntimeError as e:  # recorded in the table, not hidden
                failed[(tool, method)] = str(e).strip().splitlines()[-1][:200]
            print(f"{tool} {method}: {measured.get((tool, method)) or failed[(tool, method)]}", file=sys.stderr, flush=True)
    import modelsurgeon as ms

    order = list(measured)
    folders = [out / f"{'ours' if tool == 'modelsurgeon' else 'llmc'}-{m}" for tool, m in order]
    r = ms.evaluate(
        [str(model), *map(str, folders)],
        text=str(HELD_OUT),
        reference=str(model),
        context=args.context,
        stride=args.context,
        max_tokens=args.tokens,
        device="cpu",
    ).to_dict()
    dense = r["models"][0]["perplexity"]
    rows = [
        "| method | tool | perplexity | x dense | KL (nats/token) | top-1 agreement | time | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
        f"| dense | | {dense:.2f} | 1.00 | | | | |",
    ]
    for (tool, method), m in zip(order, r["models"][1:]):
        s, rss = measured[(tool, method)]
        rows.append(
            f"| {method} | {tool} | {m['perplexity']:.2f} | {m['perplexity'] / dense:.2f} | {m['kld']:.4f} | "
            f"{m['top1']:.3f} | {s:.0f} s | {rss:.0f} MiB |"
        )
    rows += [f"| {method} | {tool} | failed: {why} | | | | | |" for (tool, method), why in failed.items()]
    head = (
        f"SmolLM2-135M-Instruct (fp32), the same {args.samples} x {args.seqlen} calibration tokens of {CALIB.name} "
        f"(seed 0) for both tools; wanda and sparsegpt 50% unstructured, gptq w4a16 group 64 (SmolLM2's rows of 576 "
        f"are not a multiple of 128) symmetric with static act-order, block 128, dampening 0.01; lm_head left dense. Evaluation: the "
        f"first {r['tokens']} tokens of {HELD_OUT.name}, context {r['context']}, stride {r['stride']}, by the same "
        f"code for every output. Time and peak RSS: the whole child process (load, calibrate, write). "
        f"{machine()}; llm-compressor {_peer_version(args.llmc_python)}.\n"
        f"Command: `python benchmarks/bench_calibrated_peer.py --samples {args.samples} --seqlen {args.seqlen} "
        f"--tokens {args.tokens} --context {args.context}`\n"
    )
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    (WORK / "calibrated_peer_table.md").write_text(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n## calibrated methods against llm-compressor (SmolLM2-135M, CPU)\n\n" + text)


def _peer_version(python: str) -> str:
    import subprocess

    code = "from importlib.metadata import version as v; print(v('llmcompressor'), 'transformers', v('transformers'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
