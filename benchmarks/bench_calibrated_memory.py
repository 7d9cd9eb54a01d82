"""Peak memory of the calibrated methods as layers are added: one layer plus activations, not the model.

    python benchmarks/bench_calibrated_memory.py --layers 8,16,32 [--llmc-python /tmp/venv-llmc/bin/python] [--append]

Synthetic Llamas that differ only in depth (hidden 1024, intermediate 2816, 8 heads, SmolLM2's tokenizer and
vocabulary of 49152, tied embeddings, random bf16 weights written straight to safetensors by a child process):
each decoder layer is 12.6 M parameters (25 MB on disk, 50 MB in fp32), the embeddings 50 M. For each depth, in a
child process each: ``prune --method wanda``, ``quantize --method gptq`` (w4a16, group 128) and ``surgeon eval``
(perplexity against the model itself), with ``--samples`` x ``--seqlen`` calibration tokens; the peak RSS
(``ru_maxrss``) of each. With ``--llmc-python``, llm-compressor's Wanda (``oneshot``, same model, samples and
sequence length) for contrast: it loads the whole model first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _util import WORK, machine, run_measured

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "tests" / "data" / "sherlock_holmes.txt"

MAKE = r"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig
layers, out = int(sys.argv[1]), Path(sys.argv[2])
cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=layers, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
with torch.device("meta"):
    skeleton = AutoModelForCausalLM.from_config(cfg)
g = torch.Generator().manual_seed(0)
sd = {}
for name, p in skeleton.state_dict().items():
    if name == "lm_head.weight":
        continue
    if name.endswith("norm.weight"):
        sd[name] = torch.ones(p.shape, dtype=torch.bfloat16)
    else:
        sd[name] = (torch.randn(p.shape, generator=g) * 0.02).to(torch.bfloat16)
out.mkdir(parents=True, exist_ok=True)
save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
cfg.save_pretrained(out)
"""

OURS = r"""
import json, sys
import modelsurgeon as ms
what, model, out, calib = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if what == "wanda":
    ms.prune(model, out, sparsity=0.5, method="wanda", calib=calib, device="cpu", force=True)
elif what == "gptq":
    ms.quantize(model, out, scheme="w4a16", group_size=128, method="gptq", calib=calib, device="cpu", force=True)
else:
    ms.evaluate([model], text=calib["file"], context=calib["seqlen"], stride=calib["seqlen"],
                max_tokens=calib["samples"] * calib["seqlen"], device="cpu")
"""

PEER = r"""
import json, sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import WandaPruningModifier
model_dir, out, samples, seqlen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
ids = tok(open(sys.argv[5]).read(), add_special_tokens=False)["input_ids"]
rows = [ids[i * seqlen:(i + 1) * seqlen] for i in range(samples)]
ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seqlen] * samples})
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
oneshot(model=model, processor=tok, dataset=ds, num_calibration_samples=samples, max_seq_length=seqlen,
        recipe=WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"]))
model.save_pretrained(out, save_compressed=False)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="8,16,32")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--what", default="wanda,gptq,eval", help="which of ours to run: wanda, gptq, eval")
    ap.add_argument("--llmc-python", default="")
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_calibrated import smollm2

    tokenizer_from = smollm2()
    base = WORK / "memory"
    calib = json.dumps({"file": str(CALIB), "samples": args.samples, "seqlen": args.seqlen})
    whats = args.what.split(",")
    names = {"wanda": "wanda", "gptq": "gptq w4a16", "eval": "eval"}
    cols = [f"{names[w]}: peak RSS | time" for w in whats] + (
        ["llm-compressor wanda: peak RSS | time"] if args.llmc_python else []
    )
    rows = ["| layers | checkpoint | " + " | ".join(cols) + " |", "|---|---|" + "---|---|" * len(cols)]
    for n in [int(x) for x in args.layers.split(",")]:
        model = base / f"llama-{n}"
        if not (model / "model.safetensors").exists():
            run_measured([sys.executable, "-c", MAKE, str(n), str(model)])
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copyfile(tokenizer_from / f, model / f)
        size = (model / "model.safetensors").stat().st_size / 2**20
        cells = [str(n), f"{size:.0f} MiB"]
        for what in whats:
            s, rss = run_measured([sys.executable, "-c", OURS, what, str(model), str(base / f"out-{what}-{n}"), calib])
            cells += [f"{rss:.0f} MiB", f"{s:.0f} s"]
            print(f"{n} layers, {what}: {s:.0f} s, {rss:.0f} MiB", file=sys.stderr, flush=True)
        if args.llmc_python:
            s, rss = run_measured(
                [
                    args.llmc_python,
                    "-c",
                    PEER,
                    str(model),
                    str(base / f"out-llmc-{n}"),
                    str(args.samples),
                    str(args.seqlen),
                    str(CALIB),
                ]
            )
            cells += [f"{rss:.0f} MiB", f"{s:.0f} s"]
            print(f"{n} layers, llm-compressor wanda: {s:.0f} s, {rss:.0f} MiB", file=sys.stderr, flush=True)
        for p in base.glob(f"out-*-{n}"):
            shutil.rmtree(p)
        rows.append("| " + " | ".join(cells) + " |")
    head = (
        f"Synthetic Llamas (hidden 1024, intermediate 2816, vocabulary 49152, bf16; one decoder layer 12.6 M "
        f"parameters = 24 MiB on disk), {args.samples} x {args.seqlen} calibration tokens; CPU. {machine()}.\n"
        f"Command: `python benchmarks/bench_calibrated_memory.py --layers {args.layers} --samples {args.samples} "
        f"--seqlen {args.seqlen} --what {args.what}{' --llmc-python ' + args.llmc_python if args.llmc_python else ''}`\n"
    )
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    (WORK / "calibrated_memory_table.md").write_text(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n## calibrated methods: peak memory as layers are added\n\n" + text)


if __name__ == "__main__":
    main()
