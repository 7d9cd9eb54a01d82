"""Merging several PEFT LoRA adapters of one base into one adapter, in adapter space.

    cfg = AdapterMergeConfig(adapters=("a/", "b/"), method="ties", density=(0.5,), rank=16)
    with plan_adapter_merge(cfg, Output.of("merged/")) as plan:   # every adapter opened and checked
        result = run_adapter_merge(plan, progress)                # result.to_dict(): what --json prints

For every adapted module, each adapter's delta D_i = s_i B_i A_i (its scaling s_i = alpha / r, or
alpha / sqrt(r) with rsLoRA, per module with rank_pattern / alpha_pattern) is formed in float32; the deltas
are merged by a registered method with a zero base, exactly as merging the folded models would merge
them (linear, task_arithmetic, TIES, DARE, Breadcrumbs, DELLA, PCB, SCE, RAM: the task-vector methods
see the same task vectors), and the merged delta is factored again by a truncated SVD at ``rank`` (or,
with ``sv_threshold``, each module at its own rank up to ``rank``; default rank: the sum of the
adapters' ranks, which is exact for linear merges). B = U sqrt(S), A = sqrt(S) V^T, lora_alpha = r.
The relative Frobenius error of the re-factoring is reported per module: it is the whole difference
between the merged adapter and merging the folded models. One module (its adapters' factors and their
deltas) is in memory at a time; the new factors are kept until the end, as for --extract-lora.

Refused before anything is read beyond the adapters' headers: adapters trained on different bases
(``base_model_name_or_path``), targeting different modules or with different shapes, DoRA,
lora_bias, modules_to_save (whole tensors cannot be merged without the base: fold them with --lora
and merge the models), and methods that do not merge task vectors (slerp, nearswap, ...).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads
from modelsurgeon.ops.io.output import Output
from modelsurgeon.ops.io.writer import ShardedWriter, TensorSpec, provenance
from modelsurgeon.recipes.merge import AdapterMergeConfig

from .extract import factor
from .lora import _KEY, PREFIX, Adapter, open_adapter, pattern_value
from .methods import MergeInputs, MergeMethod, get_method
from .params import coerce

DELTA_METHODS = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "pcb",
    "sce",
    "ram",
    "ramplus_tl",
)


@dataclass
class Module:
    """One adapted module across the adapters: the tensor names of each adapter's factors."""

    name: str  # module path (PEFT prefix removed)
    kind: str  # "linear" | "embedding"
    factors: list[tuple[str, str, float]]  # per adapter: (A name, B name, scaling)
    shape: tuple[int, int]  # the delta's shape in the weight's layout (out, in); embeddings (vocab, dim)


def _modules_of(ad: Adapter, problems: Problems) -> dict[str, tuple[str, str, str, int, float]]:
    """module -> (kind, A name, B name, rank, scaling) of one adapter."""
    cfg = ad.config
    where = f"adapter {ad.label}"
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        problems.add(f"{where} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be merged")
        return {}
    r0, alpha0 = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r0, int) or r0 <= 0 or not isinstance(alpha0, (int, float)):
        problems.add(f"{where}: adapter_config.json needs a positive integer r and a number lora_alpha")
        return {}
    for key, what in (("use_dora", "DoRA"), ("lora_bias", "lora_bias"), ("fan_in_fan_out", "fan_in_fan_out")):
        if cfg.get(key):
            problems.add(
                f"{where} uses {what}, which cannot be merged in adapter space; fold it with --lora and merge the models"
            )
    if cfg.get("modules_to_save"):
        problems.add(
            f"{where} saves whole modules ({', '.join(cfg['modules_to_save'])}); they cannot be merged without the base: "
            "fold the adapters with --lora and merge the models"
        )
    groups: dict[str, dict[str, str]] = {}
    for name in ad.ck.names():
        key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
        m = _KEY.match(key)
        if m is None:
            problems.add(f"{where}: tensor {name} is not a LoRA factor")
            continue
        groups.setdefault(m["module"], {})[m["part"].split(".")[0]] = name
    out = {}
    rslora = bool(cfg.get("use_rslora"))
    for module, parts in groups.items():
        emb = "lora_embedding_A" in parts
        a, b = (
            (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if emb else (parts.get("lora_A"), parts.get("lora_B"))
        )
        if a is None or b is None:
            problems.add(f"{where}: module {module} has only one of its two LoRA factors")
            continue
        r = int(pattern_value(cfg.get("rank_pattern"), module, r0))
        alpha = float(pattern_value(cfg.get("alpha_pattern"), module, alpha0))
        out[module] = ("embedding" if emb else "linear", a, b, r, alpha / math.sqrt(r) if rslora else alpha / r)
    return out


def _base_of(ad: Adapter) -> str | None:
    b = ad.config.get("base_model_name_or_path")
    if not isinstance(b, str) or not b:
        return None
    p = Path(b).expanduser()
    return str(p.resolve()) if p.exists() else b


@dataclass
class AdapterMergeResult(Result):
    """What ``surgeon merge --adapters --json`` prints."""

    method: str
    adapters: list[str]
    base: str | None
    modules: int
    rank: int  # the cap (the adapter's r is the largest rank kept)
    sv_threshold: float | None
    dry_run: bool
    output: str | None
    mean_rel_error: float = 0.0  # ||merged delta - B A|| / ||merged delta||, over the modules
    max_rel_error: float = 0.0
    per_module: dict[str, dict] = field(default_factory=dict)  # module -> {"rank", "rel_error"}
    bytes_written: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.dry_run:
            for k in ("mean_rel_error", "max_rel_error", "per_module", "bytes_written", "seconds"):
                out.pop(k)
        else:
            out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class AdapterMergePlan:
    config: AdapterMergeConfig
    method: MergeMethod
    adapters: list[Adapter]
    modules: list[Module]
    params: dict
    model_params: list[dict]
    rank: int
    output: Output | None
    device: torch.device

    def result(self, output: str | None = None) -> AdapterMergeResult:
        if output is None and self.output is not None:
            output = str(self.output.path)
        c = self.config
        return AdapterMergeResult(
            self.method.name,
            [a.label for a in self.adapters],
            _base_of(self.adapters[0]),
            len(self.modules),
            self.rank,
            c.sv_threshold,
            True,
            output,
        )

    def close(self) -> None:
        for a in self.adapters:
            a.close()

    def __enter__(self) -> AdapterMergePlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _values(method: MergeMethod, cfg: AdapterMergeConfig, problems: Problems) -> tuple[dict, list[dict]]:
    n = len(cfg.adapters)
    params: dict = {}
    given = dict(cfg.params)
    for p in method.params:
        v = given.pop(p.name, p.default)
        if p.required and v is p.default:
            problems.add(f"{method.name} needs the parameter {p.name} (--param {p.name}=...)")
            continue
        val, bad = coerce(p, v)
        if bad:
            problems.add(f"--param {p.name}: {bad}")
        params[p.name] = val
    names = {p.name for p in method.model_params}
    for k in given:
        if k not in names:
            problems.add(
                f"{method.name} takes no parameter {k!r}; it takes {', '.join(p.name for p in method.params + method.model_params) or 'none'}"
            )
    per = [{} for _ in range(n)]
    for flag, values, key in (("--weight", cfg.weight, "weight"), ("--density", cfg.density, "density")):
        if not values:
            continue
        if key not in names:
            problems.add(f"{method.name} takes no {flag}")
            continue
        if len(values) not in (1, n):
            problems.add(f"{flag} was given {len(values)} times for {n} adapters; give it once, or once per adapter")
            continue
        for i in range(n):
            per[i][key] = values[0] if len(values) == 1 else values[i]
    mps = []
    for i in range(n):
        mp = {}
        for p in method.model_params:
            v = per[i].get(p.name, given.get(p.name, 1.0 if p.name == "weight" and p.required else p.default))
            val, bad = coerce(p, v)
            if bad:
                problems.add(f"{p.name} of {cfg.adapters[i]}: {bad}")
            mp[p.name] = val
        mps.append(mp)
    if method.validate and not problems:
        for msg in method.validate(params, mps, list(cfg.adapters)):
            problems.add(msg)
    return params, mps


def plan_adapter_merge(config: AdapterMergeConfig, output: Output | None = None) -> AdapterMergePlan:
    """Open every adapter (headers only) and check that they merge; raise PlanError listing every problem."""
    device = resolve_device(config.device)
    problems = Problems("the adapter merge")
    method = get_method(config.method)
    if method.name not in DELTA_METHODS:
        raise SurgeonError(
            f"--method {method.name} does not merge task vectors, so it has no meaning in adapter space",
            f"use one of: {', '.join(DELTA_METHODS)}",
        )
    if output is not None:
        output.check()
    adapters: list[Adapter] = []
    try:
        for spec in config.adapters:
            try:
                adapters.append(open_adapter(spec))
            except SurgeonError as e:
                problems.add(str(e))
        if problems:
            raise PlanError(problems.lines(), problems.what)
        found = [_modules_of(a, problems) for a in adapters]
        bases = {a.label: _base_of(a) for a in adapters}
        if len({b for b in bases.values() if b is not None}) > 1:
            problems.add(
                "the adapters were trained on different bases: "
                + ", ".join(f"{k} on {v}" for k, v in bases.items())
                + "; merge adapters of one base model"
            )
        sets = [set(f) for f in found]
        if found and any(s != sets[0] for s in sets[1:]):
            common = set.intersection(*sets)
            diffs = [f"{a.label} also has {', '.join(sorted(s - common)[:3])}" for a, s in zip(adapters, sets) if s - common]
            problems.add(
                "the adapters target different modules: " + "; ".join(diffs) + "; merge adapters with the same target_modules"
            )
        modules = []
        if not problems:
            for mod in sorted(sets[0], key=lambda m: [int(x) if x.isdigit() else x for x in re.split(r"\.", m)]):
                kinds = {f[mod][0] for f in found}
                shapes = set()
                for ad, f in zip(adapters, found):
                    kind, a, b, r, _ = f[mod]
                    A, B = ad.ck.info(a).shape, ad.ck.info(b).shape
                    if len(A) != 2 or len(B) != 2 or A[0] != B[1] or A[0] != r:
                        problems.add(f"adapter {ad.label}: {mod} has factors A{list(A)} B{list(B)} that do not fit rank {r}")
                        continue
                    shapes.add((A[1], B[0]) if kind == "embedding" else (B[0], A[1]))
                if len(kinds) > 1 or len(shapes) > 1:
                    problems.add(f"{mod}: the adapters' deltas differ in kind or shape ({', '.join(map(str, sorted(shapes)))})")
                    continue
                if shapes:
                    modules.append(Module(mod, kinds.pop(), [(f[mod][1], f[mod][2], f[mod][4]) for f in found], shapes.pop()))
        params, mps = _values(method, config, problems)
        if problems:
            raise PlanError(problems.lines(), problems.what)
        rank = config.rank or sum(max(f[m][3] for m in f) for f in found)
        return AdapterMergePlan(config, method, adapters, modules, params, mps, rank, output, device)
    except BaseException:
        for a in adapters:
            a.close()
        raise


def _delta(ad: Adapter, a: str, b: str, s: float, kind: str, dev) -> torch.Tensor:
    d = ad.ck.get(b).to(dev, torch.float32) @ ad.ck.get(a).to(dev, torch.float32)
    return (d.T if kind == "embedding" else d).mul_(s)


def merged_delta(plan: AdapterMergePlan, mod: Module) -> torch.Tensor:
    """The method's merge of the adapters' deltas of one module (zero base), in the weight's layout."""
    from .run import tensor_seed

    dev, seed = plan.device, plan.config.seed
    ds = [_delta(ad, a, b, s, mod.kind, dev) for ad, (a, b, s) in zip(plan.adapters, mod.factors)]
    base = torch.zeros_like(ds[0]) if plan.method.base != "unused" else None
    inp = MergeInputs(
        mod.name,
        ds,
        base,
        plan.params,
        plan.model_params,
        generator=lambda i, block=0: torch.Generator().manual_seed(tensor_seed(seed, mod.name, i, block)),
        out_dtype=torch.float32,
    )
    return plan.method.fn(inp)


def run_adapter_merge(
    plan: AdapterMergePlan, progress: Progress = SILENT, command: str = "surgeon merge --adapters"
) -> AdapterMergeResult:
    if plan.output is None:
        raise SurgeonError("this adapter merge plan has no output", "plan it with an output folder to run it")
    t0 = time.perf_counter()
    cfg = plan.config
    progress.start(f"merge adapters ({plan.method.name})", len(plan.modules), "modules")
    factors: dict[str, tuple] = {}
    try:
        with cpu_threads():
            for mod in plan.modules:
                m = merged_delta(plan, mod)
                mat = m.T if mod.kind == "embedding" else m  # PEFT's embedding layout: delta^T = B @ A
                cap = min(plan.rank, *mat.shape)
                a, b, k, err = factor(mat, cap, cfg.sv_threshold, cfg.exact_svd, torch.Generator().manual_seed(cfg.seed))
                factors[mod.name] = (a.cpu(), b.cpu(), k, err, mod.kind)
                progress.advance(1)
            dtype = plan.adapters[0].ck.info(plan.modules[0].factors[0][0]).torch_dtype if plan.modules else torch.float32
            if cfg.out_dtype:
                dtype = getattr(torch, cfg.out_dtype)
            specs, tensors = [], []
            for name, (a, b, _k, _err, kind) in factors.items():
                an, bn = (
                    (f"{PREFIX}{name}.lora_embedding_A", f"{PREFIX}{name}.lora_embedding_B")
                    if kind == "embedding"
                    else (
                        f"{PREFIX}{name}.lora_A.weight",
                        f"{PREFIX}{name}.lora_B.weight",
                    )
                )
                specs += [TensorSpec(an, tuple(a.shape), dtype), TensorSpec(bn, tuple(b.shape), dtype)]
                tensors += [(an, a.to(dtype)), (bn, b.to(dtype))]
            ranks = {n: f[2] for n, f in factors.items()}
            r = max(ranks.values(), default=1)
            odd = {re.escape(n): k for n, k in ranks.items() if k != r}
            conf = dict(plan.adapters[0].config)
            conf.update(
                r=r,
                lora_alpha=r,
                rank_pattern=odd,
                alpha_pattern=odd,
                use_rslora=False,
                use_dora=False,
                lora_dropout=0.0,
                inference_mode=True,
            )
            with plan.output.folder() as out:
                writer = ShardedWriter(out.path, specs, 1 << 62, provenance(command))
                try:
                    for n, t in tensors:
                        writer.write(n, t)
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
                (out.path / "model.safetensors").rename(out.path / "adapter_model.safetensors")
                (out.path / "adapter_config.json").write_text(json.dumps(conf, indent=2) + "\n")
                target = out.commit()
    finally:
        plan.close()
    errors = [f[3] for f in factors.values()]
    res = plan.result(str(target))
    res.dry_run = False
    res.mean_rel_error = sum(errors) / len(errors) if errors else 0.0
    res.max_rel_error = max(errors, default=0.0)
    res.per_module = {n: {"rank": f[2], "rel_error": f[3]} for n, f in factors.items()}
    res.bytes_written = sum(s.nbytes for s in specs)
    res.seconds = time.perf_counter() - t0
    return res
