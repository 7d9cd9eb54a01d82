"""`surgeon quantize` per scheme against gguf-py's numpy quantizers and the plain read+write floor.

Run: python benchmarks/bench_quantize.py [--layers 4] [--hidden 2048] [--repeat 2] [--threads N]
                                        [--device cpu,cuda] [--schemes w4a16,q8_0]
Writes benchmarks/work/quantize-bench/ (ignored by git) and prints Markdown tables.

``--device`` (default ``auto``) takes a comma-separated list: `surgeon quantize` and our quantizers alone run once
per device (gguf-py, the peer, runs on the CPU: it has no other path). ``--schemes`` keeps the named schemes
(the labels' first words: w4a16, w4a16+hqq, w8a16, w8a8, fp8, nf4, q8_0, ...).

The checkpoint is a Llama-shaped bf16 model built here (random weights, a byte-level tokenizer written by
hand), so the GGUF path runs end to end. Three measurements, all in this run on the same checkpoint:

1. end to end, one child process each: the read+write floor (read every tensor, write it to a safetensors
   file unchanged), `surgeon quantize` per scheme, and a gguf-py script that does what a Python GGUF
   converter does (read with safetensors, fp32 numpy, ``gguf.quants.quantize`` the linear weights, write
   with ``GGUFWriter``), for the GGUF types;
2. the quantizers alone, in this process, on the same fp32 tensors: ours (``ops/quantize/gguf_blocks.py``) against
   ``gguf.quants.quantize``; both produce the same bytes (checked here too).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import SAME_TENSORS, WORK, machine, python_snippet, run_measured  # noqa: E402

GGUF_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
SCHEMES = [  # (label, surgeon arguments)
    ("w4a16 (compressed-tensors)", ["--scheme", "w4a16"]),
    ("w4a16 + hqq (compressed-tensors)", ["--scheme", "w4a16", "--optimizer", "hqq", "--group-size", "128"]),
    ("w8a16 (compressed-tensors)", ["--scheme", "w8a16"]),
    ("w8a8 (compressed-tensors)", ["--scheme", "w8a8"]),
    ("fp8 (compressed-tensors)", ["--scheme", "fp8"]),
    ("nf4 (dense)", ["--scheme", "nf4", "--format", "dense"]),
] + [(f"{t} (gguf)", ["--scheme", t]) for t in GGUF_TYPES]


def build(folder, layers: int, hidden: int) -> None:
    """A bf16 Llama-shaped checkpoint with config.json and a byte-level tokenizer.json."""
    code = f"""
import json, torch
from pathlib import Path
from safetensors.torch import save_file
folder = Path({str(folder)!r}); folder.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)
h, inter, layers, heads, kv = {hidden}, {int(hidden * 2.75) // 256 * 256}, {layers}, {hidden // 64}, {max(1, hidden // 256)}
vocab = 32000
def w(*shape): return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
t = {{"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": w(vocab, h)}}
for i in range(layers):
    p = f"model.layers.{{i}}."
    t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    t[p + "self_attn.q_proj.weight"] = w(h, h); t[p + "self_attn.o_proj.weight"] = w(h, h)
    t[p + "self_attn.k_proj.weight"] = w(kv * 64, h); t[p + "self_attn.v_proj.weight"] = w(kv * 64, h)
    t[p + "mlp.gate_proj.weight"] = w(inter, h); t[p + "mlp.up_proj.weight"] = w(inter, h); t[p + "mlp.down_proj.weight"] = w(h, inter)
save_file(t, str(folder / "model.safetensors"), metadata={{"format": "pt"}})
cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=h, intermediate_size=inter,
           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=0, eos_token_id=0)
(folder / "config.json").write_text(json.dumps(cfg))
# GPT-2's byte-to-unicode alphabet as the vocabulary, then filler tokens, no merges
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256)); cs = bs[:]; n = 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + n); n += 1
alphabet = sorted(chr(c) for c in cs)
tokens = ["<|endoftext|>"] + alphabet + ["th"] + [f"<tok{{i}}>" for i in range(vocab - 2 - len(alphabet))]
tok = {{"version": "1.0", "added_tokens": [{{"id": 0, "content": "<|endoftext|>", "special": True}}],
       "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}},
       "decoder": {{"type": "ByteLevel"}}, "model": {{"type": "BPE", "vocab": {{t: i for i, t in enumerate(tokens)}}, "merges": ["t h"]}}}}
(folder / "tokenizer.json").write_text(json.dumps(tok))
"""
    run_measured(python_snippet(code))


FLOOR = """
import sys, torch
from modelsurgeon.ops.io.checkpoint import open_checkpoint
from modelsurgeon.ops.io.output import write_folder
from modelsurgeon.ops.io.output import OutputDir
from modelsurgeon.ops.io.writer import TensorSpec
ck = open_checkpoint(sys.argv[1])
specs = [TensorSpec(i.name, i.shape, i.torch_dtype) for i in ck.infos()]
write_folder(OutputDir(sys.argv[2], force=True), specs, ck.iter_tensors(), source=ck, command="floor", max_shard_size=1 << 40)
"""

GGUF_PY = """
import sys, numpy as np, gguf
from safetensors import safe_open
qtype = gguf.GGMLQuantizationType[sys.argv[3].upper()]
w = gguf.GGUFWriter(sys.argv[2], "llama")
with safe_open(sys.argv[1] + "/model.safetensors", "pt") as f:
    for name in f.keys():
        t = f.get_tensor(name).float().numpy()
        linear = t.ndim == 2 and "embed" not in name and "lm_head" not in name
        w.add_tensor(name, gguf.quants.quantize(t, qtype) if linear else t, raw_dtype=qtype if linear else None)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"""


def scheme_key(label: str) -> str:
    """'w4a16 + hqq (compressed-tensors)' -> 'w4a16+hqq'."""
    return label.split(" (")[0].replace(" + ", "+")


def kernel_table(folder, repeat: int, types: list[str], devices: list[str], mismatched: list[str]) -> list[str]:
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, quants
    from safetensors import safe_open

    from modelsurgeon.ops.core.device import resolve_device
    from modelsurgeon.ops.quantize.gguf_blocks import quantize_blocks

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        tensors = [f.get_tensor(n).float() for n in f.keys() if "layers.0." in n and n.endswith("proj.weight")]
    n = sum(t.numel() for t in tensors)
    rows = []
    for qt in types:

        def theirs():
            return [quants.quantize(t.numpy(), GGMLQuantizationType[qt.upper()]) for t in tensors]

        want = theirs()
        t_theirs = min(_timed(theirs, torch.device("cpu")) for _ in range(repeat))
        for name in devices:
            dev = resolve_device(name)
            on_dev = [t.to(dev) for t in tensors]

            def ours():
                return [quantize_blocks(t, qt.upper()) for t in on_dev]

            same = all(np.array_equal(a.cpu().numpy(), b) for a, b in zip(ours(), want))
            if not same:
                mismatched.append(f"{qt} on {dev.type}")
            t_ours = min(_timed(ours, dev) for _ in range(repeat))
            rows.append(
                f"| {qt} | {dev.type} | {n / 1e6:.1f} | {t_ours * 1e3:.1f} | {t_theirs * 1e3:.0f} | {t_theirs / t_ours:.2f}x | {'yes' if same else 'NO'} |"
            )
    return rows


def _timed(fn, dev) -> float:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (OMP_NUM_THREADS) for every process")
    ap.add_argument("--device", default="auto", help="comma-separated devices for ours: auto, cpu, cuda")
    ap.add_argument("--schemes", default="", help="comma-separated schemes to run (default: all)")
    a = ap.parse_args()
    devices = [d.strip() for d in a.device.split(",") if d.strip()]
    wanted = {w.strip().lower() for w in a.schemes.split(",") if w.strip()}
    schemes = [(label, args) for label, args in SCHEMES if not wanted or scheme_key(label) in wanted]
    unknown = wanted - {scheme_key(label) for label, _ in SCHEMES}
    if unknown:
        ap.error(f"unknown schemes {sorted(unknown)}; known: {', '.join(scheme_key(label) for label, _ in SCHEMES)}")
    gguf_types = [t for t in GGUF_TYPES if any(scheme_key(label) == t for label, _ in schemes)]
    env = {"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}
    os.environ.update(env)
    root = WORK / "quantize-bench"
    src = root / f"llama-{a.layers}x{a.hidden}"
    if not (src / "model.safetensors").exists():
        build(src, a.layers, a.hidden)
    size_mb = (src / "model.safetensors").stat().st_size / 2**20
    out = root / "out"
    surgeon = [sys.executable, "-m", "modelsurgeon", "quantize", str(src), "--force", "-q"]
    imports = python_snippet("import torch, numpy, safetensors, gguf, modelsurgeon.ops.quantize.run")

    def best(cmd):
        return min(run_measured(cmd, env)[0] for _ in range(a.repeat))

    run_measured(python_snippet(FLOOR) + [str(src), str(out / "floor")], env)  # warm the page cache
    t_import = best(imports)
    t_floor = best(python_snippet(FLOOR) + [str(src), str(out / "floor")])
    peer = {t: best(python_snippet(GGUF_PY) + [str(src), str(out / f"gguf-py-{t}.gguf"), t]) for t in gguf_types}
    threads = a.threads or "default"
    print(f"machine: {machine()}")
    print(
        f"checkpoint: {size_mb:.0f} MiB bf16, Llama-shaped, {a.layers} layers, hidden {a.hidden}; best of {a.repeat}; "
        f"warm page cache; torch threads: {threads}; process start + imports {t_import:.2f} s (included below)\n"
    )
    print("| what | wall s | x floor | gguf-py s | gguf-py / ours |")
    print("|---|---|---|---|---|")
    print(f"| read + write floor (same bytes out) | {t_floor:.2f} | 1.00 | | |", flush=True)
    results, same, differ = [], [], []
    for label, args in schemes:  # each row printed when measured: a run cut short keeps what it measured
        targets = []
        for dev in devices:
            target = out / (label.split()[0] + f"-{dev}" + (".gguf" if "gguf" in label else ""))
            cmd = surgeon + ["-o", str(target), *args, "--device", dev]
            # HQQ iterates ~20 times over every weight: one run is enough to see its cost
            shown = label if devices == ["auto"] else f"{label} --device {dev}"
            t = run_measured(cmd, env)[0] if "hqq" in args else best(cmd)
            results.append((shown, t))
            targets.append(target)
            qt = label.split()[0]
            extra = f"{peer[qt]:.2f} | {peer[qt] / t:.2f}x" if qt in peer else " | "
            print(f"| surgeon quantize {shown} | {t:.2f} | {t / t_floor:.2f} | {extra} |", flush=True)
        if len(targets) > 1:  # one result whatever the device: GGUF byte for byte, tensors otherwise
            if targets[0].suffix == ".gguf":
                ok = all(filecmp.cmp(targets[0], t, shallow=False) for t in targets[1:])
            else:
                try:
                    run_measured(python_snippet(SAME_TENSORS) + [str(t) for t in targets], env)
                    ok = True
                except RuntimeError:
                    ok = False
            (same if ok else differ).append(label)
    if same:
        print(f"\nsame output on {' and '.join(devices)} (checked): {', '.join(same)}")
    if differ:
        print(f"\n**DIFFERENT output on {' and '.join(devices)}**: {', '.join(differ)}")
    print("\nquantizers alone (layer 0's seven linear weights, fp32 in memory, this process):\n")
    print("| type | ours on | M values | ours ms | gguf-py ms (CPU) | speed-up | same bytes |")
    print("|---|---|---|---|---|---|---|")
    for row in kernel_table(src, a.repeat, gguf_types, devices, differ):
        print(row)
    (root / "last.json").write_text(
        json.dumps({"floor": t_floor, "import": t_import, "surgeon": dict(results), "gguf_py": peer}, indent=2)
    )
    if differ:
        sys.exit(f"bench_quantize: the output depends on the device for {', '.join(differ)}")


if __name__ == "__main__":
    main()
