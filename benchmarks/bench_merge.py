"""`surgeon merge` against mergekit on the same recipes and inputs: wall time, peak RSS, and agreement.

Run: python benchmarks/bench_merge.py --mergekit /tmp/venv-mergekit/bin/mergekit-yaml
     [--hidden 1024 --intermediate 2816 --layers 8 --vocab 32000 --finetunes 3] [--methods linear,ties,dare_ties]
     [--variants bf16,fp32] [--repeat 1]

mergekit goes in its own venv (pip install mergekit); this script only calls its executable. Inputs are
built once under benchmarks/work/merge-bench/: a random Llama-architecture base saved by transformers in
bfloat16 and N "fine-tunes" (base + small noise), each a few hundred MB. Every recipe merges the base and
all fine-tunes, and runs through both tools with the page cache warm, one tool after the other.

Variants: ``bf16`` is the usual recipe (``dtype: bfloat16``): mergekit then does its arithmetic in
bfloat16, we do ours in float32 and round once, so outputs differ by bf16 rounding. ``fp32`` adds
``dtype: float32`` + ``out_dtype: bfloat16`` so both tools compute in float32: outputs should agree to
the last bit except where float32 summation order differs. dare_ties draws random masks in both tools,
so there we compare properties (fraction of entries changed from the base, L1 norm of the change).

The floor of each recipe is a child process that starts Python, imports torch and safetensors, reads every
tensor of the recipe's inputs and writes one model of the output's size: what any tool must do at least.
`--methods all` runs every method both tools have.

Measured in child processes (this process stays small: a forked child inherits its parent's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _util import WORK, machine, python_snippet, run_measured  # noqa: E402


def run_timed(cmd: list[str], env: dict) -> tuple[float, float, float]:
    """(wall s, CPU s of the child (user + system), peak RSS MiB): CPU time is the steadier number on a
    shared machine, where other processes stretch the wall time."""
    import time

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


BUILD = """
import json, shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
root, H, I, L, V, N = Path(sys.argv[1]), *map(int, sys.argv[2:7])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H // 64,
                  num_key_value_heads=max(1, H // 256), max_position_embeddings=2048, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(root / "base")
del model
sd = load_file(str(root / "base" / "model.safetensors"))
for i in range(1, N + 1):
    g = torch.Generator().manual_seed(i)
    out = root / f"ft{i}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "base" / "config.json", out / "config.json")
    ft = {k: (v.float() + 0.004 * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in sd.items()}
    save_file(ft, str(out / "model.safetensors"), metadata={"format": "pt"})
    del ft
(root / "done").write_text("ok")
"""

COMPARE = """
import json, sys, torch
from safetensors import safe_open
from pathlib import Path
a_dir, b_dir, base_dir, random = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
def files(d):
    idx = d / "model.safetensors.index.json"
    if idx.exists():
        wm = json.loads(idx.read_text())["weight_map"]
        return {k: d / v for k, v in wm.items()}
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        return {k: d / "model.safetensors" for k in f.keys()}
fa, fb, fbase = files(a_dir), files(b_dir), files(base_dir)
assert set(fa) == set(fb), sorted(set(fa) ^ set(fb))[:5]
n = same = 0
max_abs = max_rel = 0.0
ch_a = ch_b = l1_a = l1_b = 0.0
for k in fa:
    with safe_open(str(fa[k]), "pt") as f: a = f.get_tensor(k)
    with safe_open(str(fb[k]), "pt") as f: b = f.get_tensor(k)
    assert a.shape == b.shape and a.dtype == b.dtype, (k, a.shape, b.shape, a.dtype, b.dtype)
    n += a.numel()
    same += int((a == b).sum())
    d = (a.float() - b.float()).abs().max().item()
    max_abs = max(max_abs, d)
    max_rel = max(max_rel, d / max(a.float().abs().max().item(), 1e-12))
    with safe_open(str(fbase[k]), "pt") as f: base = f.get_tensor(k).float()
    ch_a += int((a.float() != base).sum()); ch_b += int((b.float() != base).sum())
    l1_a += (a.float() - base).abs().sum().item(); l1_b += (b.float() - base).abs().sum().item()
print(json.dumps({"identical": same / n, "max_abs": max_abs, "max_rel": max_rel, "changed_a": ch_a / n, "changed_b": ch_b / n,
                  "l1_ratio": l1_a / max(l1_b, 1e-30)}))
"""


TASK_VECTOR = {"task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}
ALL = [
    "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
    "slerp", "nuslerp", "nearswap", "model_stock", "multislerp", "karcher", "sce", "ram", "ramplus_tl", "arcee_fusion",
]  # fmt: skip
RANDOM = {"dare_ties", "dare_linear", "della", "della_linear"}  # random masks: compared by their statistics

FLOOR = """
import sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
out, inputs = sys.argv[1], sys.argv[2:]
first = {}
for i, d in enumerate(inputs):
    with safe_open(d + "/model.safetensors", "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            if i == 0:
                first[k] = t
save_file(first, out)
"""


def recipe(method: str, variant: str, root: Path, n: int) -> tuple[str, list[Path]]:
    """The recipe text and the folders it reads. Every method merges the base and the fine-tunes its
    mergekit documentation describes: task-vector methods the base + all fine-tunes, slerp and nearswap two
    models, arcee_fusion the base and one fine-tune, karcher the fine-tunes (no base)."""
    fts = [root / f"ft{i}" for i in range(1, n + 1)]
    base = root / "base"
    weights = [1.0, 0.7, 0.5, 0.3, 0.2][:n]
    params: dict = {}
    base_model: Path | None = base
    if method == "linear":
        base_model, models = None, [(base, {"weight": 1.0})] + [(f, {"weight": w}) for f, w in zip(fts, weights)]
    elif method in TASK_VECTOR:
        extra = {"gamma": 0.01} if "breadcrumbs" in method else {"epsilon": 0.1} if "della" in method else {}
        models = [(f, {"weight": w, "density": 0.5, **extra}) for f, w in zip(fts, weights)]
    elif method in ("sce", "ram", "ramplus_tl", "model_stock"):
        models = [(f, {}) for f in fts]
        params = {"select_topk": 0.5} if method == "sce" else {}
    elif method == "multislerp":
        models = [(f, {"weight": w}) for f, w in zip(fts, weights)]
    elif method == "nuslerp":
        models = [(f, {"weight": w}) for f, w in zip(fts[:2], weights)]
    elif method == "karcher":
        base_model, models = None, [(f, {}) for f in fts]
    elif method in ("slerp", "nearswap"):
        base_model, models = fts[0], [(f, {}) for f in fts[:2]]
        params = {"t": 0.3 if method == "slerp" else 0.001}
    elif method == "arcee_fusion":
        models = [(fts[0], {})]
    else:
        raise SystemExit(f"no benchmark recipe for {method}")
    lines = [f"merge_method: {method}"]
    if base_model is not None:
        lines.append(f"base_model: {base_model}")
    if params:
        lines.append(f"parameters: {json.dumps(params)}")
    lines.append("models:")
    for f, p in models:
        lines.append(f"  - model: {f}")
        if p:
            lines.append(f"    parameters: {json.dumps(p)}")
    lines += ["dtype: bfloat16"] if variant == "bf16" else ["dtype: float32", "out_dtype: bfloat16"]
    reads = ([base_model] if base_model is not None else []) + [f for f, _ in models if f != base_model]
    return "\n".join(lines) + "\n", reads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mergekit", required=True, help="path of the mergekit-yaml executable (its own venv)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--finetunes", type=int, default=3)
    ap.add_argument("--methods", default="linear,ties,dare_ties", help="comma-separated, or 'all'")
    ap.add_argument("--variants", default="bf16,fp32")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    if a.methods == "all":
        a.methods = ",".join(ALL)
    root = WORK / f"merge-bench-{a.hidden}-{a.intermediate}-{a.layers}-{a.vocab}-{a.finetunes}"
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        run_measured(
            python_snippet(BUILD) + [str(root), str(a.hidden), str(a.intermediate), str(a.layers), str(a.vocab), str(a.finetunes)]
        )
    model_mb = (root / "base" / "model.safetensors").stat().st_size / 2**20
    for f in root.glob("*/model.safetensors"):  # warm the page cache for both tools alike
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load_start = os.getloadavg()[0]
    rows = []
    floors: dict[tuple, float] = {}
    for variant in a.variants.split(","):
        for method in a.methods.split(","):
            rfile = root / f"{method}-{variant}.yml"
            text, reads = recipe(method, variant, root, a.finetunes)
            rfile.write_text(text)
            key = tuple(map(str, reads))
            if key not in floors:  # the read+write floor of this recipe's inputs and output
                floor_cmd = python_snippet(FLOOR) + [str(root / "floor.safetensors"), *key]
                floors[key] = min(run_timed(floor_cmd, env)[0] for _ in range(a.repeat + 1))
            outs = {"mergekit": root / f"out-mk-{method}-{variant}", "surgeon": root / f"out-ms-{method}-{variant}"}
            cmds = {
                "mergekit": [
                    a.mergekit,
                    str(rfile),
                    str(outs["mergekit"]),
                    "--no-write-model-card",
                    "--no-copy-tokenizer",
                    "--random-seed",
                    "0",
                    "--quiet",
                ],
                "surgeon": [
                    sys.executable,
                    "-m",
                    "modelsurgeon",
                    "merge",
                    str(rfile),
                    "-o",
                    str(outs["surgeon"]),
                    "--force",
                    "-q",
                    "--device",
                    "cpu",
                    "--seed",
                    "0",
                ],
            }
            res = {tool: None for tool in cmds}
            for _ in range(a.repeat):  # alternate the tools, so both see the same machine load
                for tool in ("mergekit", "surgeon"):
                    if res[tool] == "failed":
                        continue
                    shutil.rmtree(outs[tool], ignore_errors=True)
                    try:
                        t, cpu, rss = run_timed(cmds[tool], env)
                    except RuntimeError as e:  # a method one tool lacks
                        print(f"{tool} {method}: {str(e)[-300:]}", file=sys.stderr)
                        res[tool] = "failed"
                        continue
                    best = res[tool]
                    res[tool] = (t, cpu, rss) if best is None else (min(best[0], t), min(best[1], cpu), max(best[2], rss))
            cmp = None
            if "failed" not in res.values():
                cmp = json.loads(
                    subprocess.run(
                        python_snippet(COMPARE) + [str(outs["surgeon"]), str(outs["mergekit"]), str(root / "base"), "0"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
            rows.append((method, variant, res, cmp, floors[key]))
            for o in outs.values():
                shutil.rmtree(o, ignore_errors=True)
            (root / "floor.safetensors").unlink(missing_ok=True)
            print(f"{method} {variant}: {res} {cmp}", file=sys.stderr)
    version = (
        subprocess.run(
            [a.mergekit.replace("mergekit-yaml", "python"), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        or "?"
    )
    print(f"machine: {machine()}")
    print(
        f"inputs: base + {a.finetunes} fine-tunes, Llama {a.layers} layers, hidden {a.hidden}, intermediate {a.intermediate}, "
        f"vocab {a.vocab}, bfloat16, {model_mb:.0f} MiB each ({model_mb * (a.finetunes + 1):.0f} MiB read per merge); "
        f"mergekit {version}; warm page cache; {a.repeat} run(s) each, alternating, best time, worst RSS; "
        f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores)\n"
    )
    print(
        "| method | recipe dtype | floor s | mergekit wall s | surgeon wall s | speedup (wall) | surgeon x floor "
        "| mergekit CPU s | surgeon CPU s | speedup (CPU) | mergekit peak RSS MiB | surgeon peak RSS MiB | RSS ratio | agreement |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, variant, res, cmp, floor in rows:
        dt = "bfloat16" if variant == "bf16" else "float32 -> out bfloat16"
        if cmp is None:
            ok = [t for t in res if res[t] != "failed"]
            (ts, cs, rs) = res["surgeon"] if "surgeon" in ok else (float("nan"),) * 3
            print(
                f"| {method} | {dt} | {floor:.1f} | n/a | {ts:.1f} | | {ts / floor:.2f}x | | {cs:.1f} | | | {rs:.0f} | | "
                f"{', '.join(t for t in res if t not in ok)} failed (stderr above) |"
            )
            continue
        (tm, cm, rm), (ts, cs, rs) = res["mergekit"], res["surgeon"]
        if method in RANDOM:
            agree = (
                f"random masks: changed-from-base {cmp['changed_a']:.3f} vs {cmp['changed_b']:.3f}, "
                f"L1 of change ratio {cmp['l1_ratio']:.4f}"
            )
        else:
            agree = f"{cmp['identical']:.4%} bit-identical, max abs diff {cmp['max_abs']:.3g} (rel {cmp['max_rel']:.2g})"
        print(
            f"| {method} | {dt} | {floor:.1f} | {tm:.1f} | {ts:.1f} | {tm / ts:.2f}x | {ts / floor:.2f}x | {cm:.1f} | {cs:.1f} | {cm / cs:.2f}x | {rm:.0f} | {rs:.0f} "
            f"| {rs / rm:.2f} | {agree} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
