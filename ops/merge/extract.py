"""Extracting a LoRA adapter from a fine-tune (``surgeon merge --extract-lora FT --base B --rank R``).

    cfg = ExtractConfig(finetune="ft/", base="org/base", rank=16)
    with plan_extract(cfg, Output.of("adapter/")) as plan:   # both opened (headers only) and checked
        result = run_extract(plan, progress)                  # result.to_dict(): what --json prints

The output is a PEFT adapter folder (adapter_model.safetensors + adapter_config.json) holding a rank-r
truncated SVD of every target weight's delta (fine-tune - base): B = U sqrt(S), A = sqrt(S) V^T,
lora_alpha = r so the scale is 1. Changed tensors that are not LoRA targets (norms, embeddings, the head)
are saved whole through modules_to_save, and a changed bias of a target as its lora_B.bias, so nothing
the fine-tune changed is lost.

Rank: ``rank`` is the cap; with ``sv_threshold`` each module keeps only the singular values at least that
fraction of its largest (at least 1), so a module the fine-tune barely changed gets a small rank
(``rank_pattern``/``alpha_pattern`` carry the per-module ranks). Each module's relative Frobenius error
||delta - B A|| / ||delta|| is reported. With ``embed_lora`` the embedding matrices are factored too
(PEFT's lora_embedding_A/B) instead of being saved whole.

One target is read and factored at a time; the factors are kept until the end (the adapter's shapes are
known only then), so memory is the adapter itself plus one weight pair.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import CheckpointError, PlanError, SurgeonError
from modelsurgeon.ops.core.names import EMBEDDING, parent_module
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads, prefetched
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint, quantized_reason
from modelsurgeon.ops.io.output import Output, local_inputs
from modelsurgeon.ops.io.targets import select_targets
from modelsurgeon.ops.io.writer import ShardedWriter, TensorSpec, provenance
from modelsurgeon.recipes.merge import ExtractConfig

from .lora import PREFIX


def truncated_svd(
    m: torch.Tensor, k: int, exact: bool, generator: torch.Generator | None = None, oversample: int = 16, iters: int = 4
):
    """(U_k, S_k, Vh_k) of a 2-D float tensor; randomized (Halko et al.) unless ``exact`` or small."""
    rows, cols = m.shape
    q = min(k + oversample, rows, cols)
    if exact or q >= min(rows, cols) or rows * cols <= 1 << 20:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    g = torch.randn(cols, q, generator=generator).to(m.device, m.dtype)
    y = m @ g
    for _ in range(iters):  # power iterations, re-orthonormalised each time
        y = m @ (m.T @ torch.linalg.qr(y).Q)
    qm = torch.linalg.qr(y).Q
    ub, s, vh = torch.linalg.svd(qm.T @ m, full_matrices=False)
    return (qm @ ub)[:, :k], s[:k], vh[:k]


def adapter_config(
    base_spec: str, rank: int, ranks: dict[str, int], full_modules: list[str], lora_bias: bool, task_type: str | None
) -> dict:
    """PEFT's adapter_config.json for the extracted factors (``ranks``: weight -> its rank; ``rank``: the
    largest, the adapter's r)."""
    targets = [parent_module(n) for n in ranks]
    odd = {re.escape(parent_module(n)): r for n, r in ranks.items() if r != rank}
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_spec,
        "r": rank,
        "lora_alpha": rank,
        "target_modules": targets,
        "rank_pattern": odd,
        "alpha_pattern": odd,
        "modules_to_save": full_modules or None,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": lora_bias,
        "bias": "none",
        "lora_dropout": 0.0,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


@dataclass
class ExtractResult(Result):
    """What ``surgeon merge --extract-lora --json`` prints."""

    finetune: str
    base: str
    rank: int  # the cap (the adapter's r is the largest rank kept)
    sv_threshold: float | None
    modules: int  # weights given LoRA factors
    candidates_for_full_save: int | None  # dry run only: other float tensors, saved whole if they changed
    dry_run: bool
    output: str | None
    full_tensors: list[str] = field(default_factory=list)  # saved whole (modules_to_save)
    mean_rel_error: float = 0.0  # ||delta - B A|| / ||delta|| over the factored weights
    max_rel_error: float = 0.0
    per_module: dict[str, dict] = field(default_factory=dict)  # module -> {"rank", "rel_error"}
    bytes_written: int = 0
    seconds: float = 0.0
    adapter_config: dict | None = None  # not printed: it is the output's adapter_config.json

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("adapter_config")
        if self.dry_run:
            keep = ("finetune", "base", "rank", "sv_threshold", "modules", "candidates_for_full_save", "dry_run", "output")
            return {k: out[k] for k in keep}
        out.pop("candidates_for_full_save")
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class ExtractPlan:
    config: ExtractConfig
    ft: Checkpoint
    base: Checkpoint
    targets: list[str]  # weights given LoRA factors (linear weights, then embeddings with embed_lora)
    caps: dict[str, int]  # their largest possible ranks (the rank, or less for a thinner weight)
    embeddings: set[str]  # targets factored as embedding LoRA
    candidates: list[str]  # other float tensors, saved whole when they changed
    output: Output | None
    device: torch.device

    def result(self, output: str | None = None) -> ExtractResult:
        """The dry run's result; ``output`` names the output as the caller gave it (default: the plan's)."""
        if output is None and self.output is not None:
            output = str(self.output.path)
        c = self.config
        return ExtractResult(c.finetune, c.base, c.rank, c.sv_threshold, len(self.caps), len(self.candidates), True, output)

    def close(self) -> None:
        self.ft.close()
        self.base.close()

    def __enter__(self) -> ExtractPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_extract(config: ExtractConfig, output: Output | None = None) -> ExtractPlan:
    """Open both models and check that they line up; raise PlanError listing every problem."""
    device = resolve_device(config.device)
    if output is not None:
        output.check("dir", inputs=local_inputs(config.finetune, config.base))
    problems = Problems("the LoRA extraction")
    cks = []
    for spec in (config.finetune, config.base):
        try:
            cks.append(open_checkpoint(spec))
        except CheckpointError as e:
            problems.add(str(e))
    if problems:
        for ck in cks:
            ck.close()
        raise PlanError(problems.lines(), problems.what)
    ft, bs = cks
    try:
        if output is not None:  # again, now that the inputs are known
            output.check("dir", inputs=[*ft.input_paths(), *bs.input_paths()])
        for ck in (ft, bs):
            reason = quantized_reason(ck) if ck.source_format is None else None  # a dequantizing view reads them
            if reason is not None:
                problems.add(
                    f"{ck.label} is quantized ({reason}) in a form that is not read yet; extract LoRA factors from the full-precision checkpoints"
                )
        targets = select_targets(bs, config.include, config.exclude)
        embeddings = set()
        if config.embed_lora:
            embeddings = {
                i.name
                for i in bs.infos()
                if i.is_float
                and len(i.shape) == 2
                and EMBEDDING.search(i.name)
                and i.name.endswith(".weight")
                and i.name not in targets
            }
            targets += [n for n in bs.names() if n in embeddings]
        candidates = _check_pairs(ft, bs, targets, problems)
        if problems:
            raise PlanError(problems.lines(), problems.what)
        caps = {n: min(config.rank, *bs.info(n).shape) for n in targets}
        return ExtractPlan(config, ft, bs, targets, caps, embeddings, candidates, output, device)
    except BaseException:
        ft.close()
        bs.close()
        raise


def _check_pairs(ft: Checkpoint, bs: Checkpoint, targets: list[str], problems: Problems) -> list[str]:
    """Every target in both with one shape; the other float tensors of both (same shape) as candidates."""
    if not targets:
        problems.add(f"{bs.label} has no 2-D linear weights to extract LoRA factors for; choose some with --include")
    for name in targets:
        if name not in ft:
            problems.add(f"{ft.label} has no tensor {name} (which {bs.label} has)")
        elif ft.info(name).shape != bs.info(name).shape:
            problems.add(
                f"{name}: {ft.label} has shape {list(ft.info(name).shape)} but {bs.label} has {list(bs.info(name).shape)}"
            )
    tset = set(targets)
    candidates = []
    for info in bs.infos():
        if info.name in tset or not info.is_float or info.name not in ft:
            continue
        if ft.info(info.name).shape != info.shape:
            problems.add(
                f"{info.name}: {ft.label} has shape {list(ft.info(info.name).shape)} but {bs.label} has {list(info.shape)}; "
                "a LoRA adapter cannot resize a tensor (resize the base's vocabulary first)"
            )
            continue
        candidates.append(info.name)
    return candidates


def choose_rank(s: torch.Tensor, cap: int, threshold: float | None) -> int:
    """How many singular values (descending ``s``) to keep: the cap, or with ``threshold`` those at least
    that fraction of the largest (at least one, at most the cap)."""
    if threshold is None or s.numel() == 0 or float(s[0]) <= 0:
        return min(cap, s.numel()) if threshold is None else max(1, min(cap, s.numel()))
    return max(1, min(cap, int(torch.count_nonzero(s >= threshold * s[0]))))


def factor(delta: torch.Tensor, cap: int, threshold: float | None, exact: bool, generator) -> tuple:
    """(A, B, rank, relative error) of the best rank-k approximation B @ A of ``delta`` (float32)."""
    u, s, vh = truncated_svd(delta, cap, exact, generator)
    k = choose_rank(s, cap, threshold)
    root = s[:k].sqrt()
    a, b = root[:, None] * vh[:k], u[:, :k] * root[None, :]
    total = float(torch.linalg.vector_norm(delta))
    err = float(torch.linalg.vector_norm(delta - b @ a)) / total if total > 0 else 0.0
    return a, b, k, err


@dataclass
class _Factored:
    a: torch.Tensor
    b: torch.Tensor
    rank: int
    error: float


def _factor_all(plan: ExtractPlan, progress: Progress) -> dict[str, _Factored]:
    """Every target's factors, one weight pair read at a time (the next pair read ahead)."""
    ft, bs, dev, cfg = plan.ft, plan.base, plan.device, plan.config
    out: dict[str, _Factored] = {}
    reads = prefetched(((n, ft.get(n), bs.get(n)) for n in plan.targets), depth=1)
    for name, x, b in reads:
        _check_finite(name, x, ft.label)
        _check_finite(name, b, bs.label)
        delta = x.to(dev, torch.float32) - b.to(dev, torch.float32)
        del x, b
        if name in plan.embeddings:  # PEFT's embedding LoRA: delta^T = B @ A, A [r, vocab], B [dim, r]
            delta = delta.T
        a, bb, k, err = factor(delta, plan.caps[name], cfg.sv_threshold, cfg.exact_svd, torch.Generator().manual_seed(cfg.seed))
        del delta
        out[name] = _Factored(a.cpu(), bb.cpu(), k, err)
        progress.advance(1)
    return out


@dataclass
class _Adapter:
    """What the adapter holds: the tensors to write, in order, and where each comes from."""

    specs: list[TensorSpec]
    work: list[tuple[str, str]]  # ("lora" | "full" | "bias", base tensor name)
    full: list[str]  # tensors saved whole
    full_modules: list[str]  # modules_to_save
    lora_bias: bool


def _factor_names(plan: ExtractPlan, name: str) -> tuple[str, str]:
    mod = PREFIX + parent_module(name)
    if name in plan.embeddings:
        return f"{mod}.lora_embedding_A", f"{mod}.lora_embedding_B"
    return f"{mod}.lora_A.weight", f"{mod}.lora_B.weight"


def _adapter_layout(plan: ExtractPlan, changed: list[str], factors: dict[str, _Factored]) -> _Adapter:
    ft, bs = plan.ft, plan.base
    target_modules = {parent_module(n) for n in plan.targets}
    lora_bias = [n for n in changed if n.endswith(".bias") and parent_module(n) in target_modules]
    full_modules = sorted({parent_module(n) for n in changed if n not in lora_bias})
    full = [
        i.name
        for i in bs.infos()
        if i.is_float and i.name in ft and parent_module(i.name) in full_modules and i.name not in factors
    ]
    specs, work = [], []
    for name in bs.names():
        dt = _out_dtype(plan, name)
        if name in factors:
            f = factors[name]
            an, bn = _factor_names(plan, name)
            specs += [TensorSpec(an, tuple(f.a.shape), dt), TensorSpec(bn, tuple(f.b.shape), dt)]
            work.append(("lora", name))
        elif name in full:
            specs.append(TensorSpec(PREFIX + name, tuple(bs.info(name).shape), dt))
            work.append(("full", name))
        elif name in lora_bias:
            specs.append(TensorSpec(f"{PREFIX}{parent_module(name)}.lora_B.bias", tuple(bs.info(name).shape), dt))
            work.append(("bias", name))
    return _Adapter(specs, work, full, full_modules, bool(lora_bias))


def _out_dtype(plan: ExtractPlan, name: str) -> torch.dtype:
    out = plan.config.out_dtype
    return getattr(torch, out) if out else plan.ft.info(name).torch_dtype


def _tensors(plan: ExtractPlan, work: list[tuple[str, str]], factors: dict[str, _Factored]) -> Iterator:
    """(adapter tensor name, tensor) in the order of the specs."""
    ft, bs = plan.ft, plan.base

    def read(kind: str, n: str):
        if kind == "lora":
            return kind, n, None, None
        return kind, n, ft.get(n), None if kind == "full" else bs.get(n)

    for kind, name, x, b in prefetched((read(k, n) for k, n in work), depth=1):
        dt = _out_dtype(plan, name)
        if x is not None:
            _check_finite(name, x, plan.ft.label)
        if b is not None:
            _check_finite(name, b, plan.base.label)
        if kind == "full":
            yield PREFIX + name, x.to(dt)
        elif kind == "bias":
            yield f"{PREFIX}{parent_module(name)}.lora_B.bias", (x.float() - b.float()).to(dt)
        else:
            f = factors.pop(name)
            an, bn = _factor_names(plan, name)
            yield an, f.a.to(dt)
            yield bn, f.b.to(dt)


def _check_finite(name: str, t: torch.Tensor, label: str) -> None:
    """Refuse NaN or infinity in an input: its factors would be NaN (aminmax propagates NaN and shows inf)."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t.float()))).all()):
        raise SurgeonError(f"{name} of {label} holds NaN or infinite values", "fix the checkpoint; nothing was written")


def run_extract(plan: ExtractPlan, progress: Progress = SILENT, command: str = "surgeon merge --extract-lora") -> ExtractResult:
    """Factor every target's delta, then write the PEFT adapter folder atomically."""
    if plan.output is None:
        raise SurgeonError("this extraction plan has no output", "plan it with an output folder to run it")
    t0 = time.perf_counter()
    ft, bs, cfg = plan.ft, plan.base, plan.config
    progress.start("extract LoRA", len(plan.caps), "modules")
    try:
        with cpu_threads():
            # pass 1: which non-target tensors did the fine-tune change? (read in pairs, nothing kept)
            changed = [n for n in plan.candidates if not torch.equal(ft.get(n), bs.get(n))]
            factors = _factor_all(plan, progress)
            per_module = {parent_module(n): {"rank": f.rank, "rel_error": f.error} for n, f in factors.items()}
            errors = [f.error for f in factors.values()]
            ranks = {n: f.rank for n, f in factors.items()}
            adapter = _adapter_layout(plan, changed, factors)
            archs = (ft.config or {}).get("architectures") or []
            task_type = "CAUSAL_LM" if archs and str(archs[0]).endswith("ForCausalLM") else None
            config = adapter_config(cfg.base, max(ranks.values()), ranks, adapter.full_modules, adapter.lora_bias, task_type)
            with plan.output.folder() as out:
                writer = ShardedWriter(out.path, adapter.specs, 1 << 62, provenance(command))
                try:
                    for name, tensor in _tensors(plan, adapter.work, factors):
                        writer.write(name, tensor)
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
                (out.path / "model.safetensors").rename(out.path / "adapter_model.safetensors")
                (out.path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
                target = out.commit()
    finally:
        plan.close()
    return ExtractResult(
        cfg.finetune,
        cfg.base,
        cfg.rank,
        cfg.sv_threshold,
        len(plan.caps),
        None,
        False,
        str(target),
        adapter.full,
        sum(errors) / len(errors) if errors else 0.0,
        max(errors) if errors else 0.0,
        per_module,
        sum(s.nbytes for s in adapter.specs),
        time.perf_counter() - t0,
        config,
    )
