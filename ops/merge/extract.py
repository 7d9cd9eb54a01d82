"""Extracting a LoRA adapter from a fine-tune (``surgeon merge --extract-lora FT --base B --rank R``).

    cfg = ExtractConfig(finetune="ft/", base="org/base", rank=16)
    with plan_extract(cfg, Output.of("adapter/")) as plan:   # both opened (headers only) and checked
        result = run_extract(plan, progress)                  # result.to_dict(): what --json prints

The output is a PEFT adapter folder (adapter_model.safetensors + adapter_config.json) holding a rank-r
truncated SVD of every target weight's delta (fine-tune - base): B = U sqrt(S), A = sqrt(S) V^T,
lora_alpha = r so the scale is 1. Changed tensors that are not LoRA targets (norms, embeddings, the head)
are saved whole through modules_to_save, and a changed bias of a target as its lora_B.bias, so nothing
the fine-tune changed is lost. One target is read and factored at a time.
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
from modelsurgeon.ops.core.names import parent_module
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads, prefetched
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint
from modelsurgeon.ops.io.output import Output
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
    """PEFT's adapter_config.json for the extracted factors (``ranks``: weight -> its rank)."""
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
    rank: int
    modules: int  # weights given LoRA factors
    candidates_for_full_save: int | None  # dry run only: other float tensors, saved whole if they changed
    dry_run: bool
    output: str | None
    full_tensors: list[str] = field(default_factory=list)  # saved whole (modules_to_save)
    mean_rel_error: float = 0.0  # ||delta - B A|| / ||delta|| over the factored weights
    max_rel_error: float = 0.0
    bytes_written: int = 0
    seconds: float = 0.0
    adapter_config: dict | None = None  # not printed: it is the output's adapter_config.json

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("adapter_config")
        if self.dry_run:
            return {k: out[k] for k in ("finetune", "base", "rank", "modules", "candidates_for_full_save", "dry_run", "output")}
        out.pop("candidates_for_full_save")
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class ExtractPlan:
    config: ExtractConfig
    ft: Checkpoint
    base: Checkpoint
    targets: list[str]  # weights given LoRA factors
    ranks: dict[str, int]  # their ranks (the rank, or less for a thinner weight)
    candidates: list[str]  # other float tensors, saved whole when they changed
    output: Output | None
    device: torch.device

    def result(self, output: str | None = None) -> ExtractResult:
        """The dry run's result; ``output`` names the output as the caller gave it (default: the plan's)."""
        if output is None and self.output is not None:
            output = str(self.output.path)
        c = self.config
        return ExtractResult(c.finetune, c.base, c.rank, len(self.ranks), len(self.candidates), True, output)

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
        output.check()
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
        targets = select_targets(bs, config.include, config.exclude)
        candidates = _check_pairs(ft, bs, targets, problems)
        if problems:
            raise PlanError(problems.lines(), problems.what)
        ranks = {n: min(config.rank, *bs.info(n).shape) for n in targets}
        return ExtractPlan(config, ft, bs, targets, ranks, candidates, output, device)
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


@dataclass
class _Adapter:
    """What the adapter holds: the tensors to write, in order, and the work that makes them."""

    specs: list[TensorSpec]
    work: list[tuple[str, str]]  # ("lora" | "full" | "bias", base tensor name)
    full: list[str]  # tensors saved whole
    full_modules: list[str]  # modules_to_save
    lora_bias: bool


def _adapter_layout(plan: ExtractPlan, changed: list[str]) -> _Adapter:
    ft, bs = plan.ft, plan.base
    target_modules = {parent_module(n) for n in plan.targets}
    lora_bias = [n for n in changed if n.endswith(".bias") and parent_module(n) in target_modules]
    full_modules = sorted({parent_module(n) for n in changed if n not in lora_bias})
    full = [
        i.name
        for i in bs.infos()
        if i.is_float and i.name in ft and parent_module(i.name) in full_modules and i.name not in plan.ranks
    ]
    specs, work = [], []
    for name in bs.names():
        dt = _out_dtype(plan, name)
        if name in plan.ranks:
            k, (rows, cols) = plan.ranks[name], bs.info(name).shape
            mod = PREFIX + parent_module(name)
            specs += [TensorSpec(f"{mod}.lora_A.weight", (k, cols), dt), TensorSpec(f"{mod}.lora_B.weight", (rows, k), dt)]
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


def _tensors(plan: ExtractPlan, work: list[tuple[str, str]], errors: list[float], progress: Progress) -> Iterator:
    """(adapter tensor name, tensor) in the order of the specs; the relative error of each factored weight
    goes to ``errors``."""
    ft, bs, dev, cfg = plan.ft, plan.base, plan.device, plan.config
    reads = prefetched(((kind, n, ft.get(n), None if kind == "full" else bs.get(n)) for kind, n in work), depth=1)
    for kind, name, x, b in reads:
        dt = _out_dtype(plan, name)
        if kind == "full":
            yield PREFIX + name, x.to(dt)
            continue
        delta = x.to(dev, torch.float32) - b.to(dev, torch.float32)
        del x, b
        mod = PREFIX + parent_module(name)
        if kind == "bias":
            yield f"{mod}.lora_B.bias", delta.to(dt).cpu()
            progress.advance(1)
            continue
        u, s, vh = truncated_svd(delta, plan.ranks[name], cfg.exact_svd, torch.Generator().manual_seed(cfg.seed))
        root = s.sqrt()
        a, b = root[:, None] * vh, u * root[None, :]
        total = float(torch.linalg.vector_norm(delta))
        errors.append(float(torch.linalg.vector_norm(delta.sub_(b @ a))) / total if total > 0 else 0.0)
        del delta
        yield f"{mod}.lora_A.weight", a.to(dt).cpu()
        yield f"{mod}.lora_B.weight", b.to(dt).cpu()
        progress.advance(1)


def run_extract(plan: ExtractPlan, progress: Progress = SILENT, command: str = "surgeon merge --extract-lora") -> ExtractResult:
    """Stream the targets through a truncated SVD into a PEFT adapter folder; commit it atomically."""
    if plan.output is None:
        raise SurgeonError("this extraction plan has no output", "plan it with an output folder to run it")
    t0 = time.perf_counter()
    ft, bs = plan.ft, plan.base
    progress.start("extract LoRA", len(plan.ranks), "modules")
    try:
        # pass 1: which non-target tensors did the fine-tune change? (read in pairs, nothing kept)
        changed = [n for n in plan.candidates if not torch.equal(ft.get(n), bs.get(n))]
        adapter = _adapter_layout(plan, changed)
        archs = (ft.config or {}).get("architectures") or []
        task_type = "CAUSAL_LM" if archs and str(archs[0]).endswith("ForCausalLM") else None
        config = adapter_config(
            plan.config.base, plan.config.rank, plan.ranks, adapter.full_modules, adapter.lora_bias, task_type
        )
        errors: list[float] = []
        with cpu_threads(), plan.output.folder() as out:
            writer = ShardedWriter(out.path, adapter.specs, 1 << 62, provenance(command))
            try:
                for name, tensor in _tensors(plan, adapter.work, errors, progress):
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
        plan.config.finetune,
        plan.config.base,
        plan.config.rank,
        len(plan.ranks),
        None,
        False,
        str(target),
        adapter.full,
        sum(errors) / len(errors) if errors else 0.0,
        max(errors) if errors else 0.0,
        sum(s.nbytes for s in adapter.specs),
        time.perf_counter() - t0,
        config,
    )
