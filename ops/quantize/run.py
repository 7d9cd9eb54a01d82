"""`surgeon quantize`: plan, stream every tensor through a scheme, write the chosen format, summarise.

    plan = plan_quantize(ck, cfg, output, force)     # every check before a tensor is read; OUT refused early
    summary = run_quantize(plan, command, progress)   # one tensor at a time, atomic output

Formats (``--format``): ``compressed-tensors`` (a folder vLLM/transformers load), ``gguf`` (one file for
llama.cpp), ``dense`` (quantize then dequantize back into the original dtype: what the scheme costs).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.io.checkpoint import Checkpoint
from modelsurgeon.ops.io.targets import select_targets
from modelsurgeon.recipes.quantize import QuantizeConfig

from .quant import QuantSpec, Scheme, get_scheme, quantize_weight, schemes, sqnr_db

_QUANTIZED_DTYPES = {"I8", "U8", "I32", "F8_E4M3", "F8_E5M2", "F8_E8M0"}
_QUANTIZED_NAMES = re.compile(
    r"(weight_packed|weight_scale|weight_zero_point|qweight|qzeros|\.scales|\.absmax|quant_state|\.SCB)$"
)


@dataclass
class QuantPlan:
    ck: Checkpoint
    cfg: QuantizeConfig
    spec: QuantSpec
    fmt: str
    targets: list[str]
    output: Path
    force: bool
    device: torch.device
    max_shard_size: str = "5GB"
    out_handle: object = None  # OutputDir or OutputFile, created during planning (refuses OUT early)
    notes: list[str] = field(default_factory=list)
    gguf_plan: list | None = None
    gguf_meta: dict | None = None


def resolve_format(scheme: Scheme, fmt: str) -> str:
    if fmt == "auto":
        return scheme.formats[0]
    if fmt not in scheme.formats:
        able = [s.name for s in schemes() if fmt in s.formats]
        raise UsageError(
            f"--format {fmt} cannot hold scheme {scheme.name}",
            f"{scheme.name} can be written as {' or '.join(scheme.formats)}; {fmt} holds {', '.join(able)}",
        )
    return fmt


def resolve_spec(cfg: QuantizeConfig, notes: list[str]) -> QuantSpec:
    s = get_scheme(cfg.scheme)
    if cfg.group_size is not None and s.group_fixed:
        what = "block size 32 is part of the GGUF format" if s.family == "gguf" else "fp8 is one scale per channel"
        raise UsageError(f"--group-size does not apply to {s.name}: its {what}")
    if cfg.asym and not s.asym_capable:
        hint = (
            "use q4_1 or q5_1 (the asymmetric GGUF types)"
            if s.family == "gguf"
            else "--asym works with " + ", ".join(x.name for x in schemes() if x.asym_capable)
        )
        raise UsageError(f"--asym does not apply to {s.name}", hint)
    hqq = None
    if cfg.optimizer == "hqq":
        if not s.hqq_capable:
            raise UsageError(
                f"--optimizer hqq does not apply to {s.name}",
                "it refines the integer schemes: " + ", ".join(x.name for x in schemes() if x.hqq_capable),
            )
        hqq = cfg.hqq
    group = s.group_size
    if cfg.group_size is not None:
        group = cfg.group_size
    elif hqq is not None and s.family == "int" and s.group_size != -1:
        group = cfg.hqq.group_size
        notes.append(f"hqq: group size {group} (HQQ's default); pass --group-size {s.group_size} for {s.name}'s usual one")
    return QuantSpec(s, group, s.symmetric and not cfg.asym, hqq)


def check_not_quantized(ck: Checkpoint) -> None:
    qc = (ck.config or {}).get("quantization_config")
    if qc:
        what = " ".join(str(qc.get(k)) for k in ("quant_method", "format") if qc.get(k))
        raise SurgeonError(
            f"{ck.label} is already quantized (config.json quantization_config: {what or 'present'})",
            "quantize the original full-precision checkpoint",
        )
    for info in ck.infos():
        if _QUANTIZED_NAMES.search(info.name) or (info.dtype in _QUANTIZED_DTYPES and info.name.endswith("weight")):
            raise SurgeonError(
                f"{ck.label} is already quantized: it holds {info.name} ({info.dtype})",
                "quantize the original full-precision checkpoint",
            )


def plan_quantize(ck: Checkpoint, cfg: QuantizeConfig, output: str, force: bool, max_shard_size: str = "5GB") -> QuantPlan:
    from modelsurgeon.ops.io.output import OutputDir, OutputFile

    notes: list[str] = []
    spec = resolve_spec(cfg, notes)
    fmt = resolve_format(spec.scheme, cfg.format)
    device = resolve_device(cfg.device)
    check_not_quantized(ck)
    targets = select_targets(ck, cfg.include, cfg.ignore, "--include", "--ignore")
    if not targets:
        raise SurgeonError(
            f"no tensor of {ck.label} is selected for quantization",
            "the default takes 2-D linear weights; choose tensors with --include REGEX",
        )
    problems = []
    for name in targets:
        info = ck.info(name)
        if len(info.shape) != 2:
            problems.append(
                f"{name} is {len(info.shape)}-D {list(info.shape)}; quantize takes 2-D weights (leave it out with --ignore)"
            )
            continue
        cols = info.shape[1]
        g = spec.group_for(cols)
        if g <= 0 or cols % g:
            flag = "the GGUF block size" if spec.scheme.group_fixed else "--group-size"
            problems.append(
                f"{name} has rows of {cols} values, not a multiple of the group size {g} ({flag}); "
                f"pick a size that divides {cols} or leave the tensor out with --ignore"
            )
    if spec.scheme.family == "nf4":
        problems += [
            f"{n} has {ck.info(n).numel} values, not a multiple of the block size {spec.group_size}"
            for n in targets
            if ck.info(n).numel % spec.group_size
        ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SurgeonError(problems[0] + more)
    plan = QuantPlan(ck, cfg, spec, fmt, targets, Path(output), force, device, max_shard_size, notes=notes)
    if fmt == "gguf":
        _plan_gguf(plan)
        plan.out_handle = OutputFile(output, force)
    else:
        if fmt == "compressed-tensors":
            from modelsurgeon.ops.quantize.formats.compressed_tensors import module_name

            for n in targets:
                module_name(n)
            if not spec.symmetric and spec.scheme.ct_format == "pack-quantized":
                notes.append(
                    "warning: transformers (5.23, compressed-tensors 0.20) cannot load asymmetric pack-quantized "
                    "checkpoints (weight_zero_point shape mismatch); vLLM can. Drop --asym for transformers"
                )
        plan.out_handle = OutputDir(output, force)
    return plan


def _plan_gguf(plan: QuantPlan) -> None:
    from modelsurgeon.ops.quantize.formats.gguf import check_architecture, check_rows, file_metadata, plan_tensors
    from modelsurgeon.ops.quantize.formats.gguf_tokenizer import read_vocab

    ck = plan.ck
    check_architecture(ck.config, ck.label)
    for n in plan.targets:
        bad = check_rows(n, ck.info(n).shape, ck.config)
        if bad:
            raise SurgeonError(bad)
    tensors = plan_tensors(ck.infos(), set(plan.targets), plan.spec.scheme.gguf_type)
    if not ck.resolved.path.is_dir():
        raise SurgeonError(
            "--format gguf needs the model folder (config.json and tokenizer beside the weights)",
            "give the folder, not the .safetensors file",
        )
    vocab = read_vocab(ck.folder, ck.config, warn=lambda m: plan.notes.append("warning: " + m))
    n_tok, n_vocab = len(vocab["tokenizer.ggml.tokens"]), int(ck.config.get("vocab_size") or 0)
    if n_tok != n_vocab:
        raise SurgeonError(
            f"the tokenizer of {ck.label} has {n_tok} tokens but config.json says vocab_size {n_vocab}",
            "llama.cpp needs one token per embedding row; fix the tokenizer or the config",
        )
    name = str(ck.config.get("_name_or_path") or ck.folder.name).rstrip("/").split("/")[-1] or ck.folder.name
    plan.gguf_plan = tensors
    plan.gguf_meta = file_metadata(ck.config, plan.spec.scheme.gguf_type, name, vocab)


# --------------------------------------------------------------------------------------------
# stream


@dataclass
class TensorRow:
    name: str
    shape: list[int]
    dtype: str
    scheme: str | None
    bits_per_weight: float | None
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None
    rel_l2: float | None
    signal: float = 0.0
    noise: float = 0.0

    def public(self) -> dict:
        d = dict(self.__dict__)
        d.pop("signal")
        d.pop("noise")
        return d


def _quantize_one(plan: QuantPlan, name: str, w: torch.Tensor, need_dequant: bool):
    dev = plan.device
    wd = w.to(dev, non_blocking=True) if dev.type != "cpu" else w
    qw = quantize_weight(wd, plan.spec, plan.cfg.use_triton, need_dequant)
    if not need_dequant:
        qw.dequantized = None
    return qw, qw.extra["signal"], qw.extra["noise"]


def run_quantize(plan: QuantPlan, command: str, advance: Callable[[int], None] = lambda n: None) -> dict:
    t0 = time.perf_counter()
    ck, spec = plan.ck, plan.spec
    rows: list[TensorRow] = []
    target_set = set(plan.targets)
    if plan.fmt == "gguf":
        _write_gguf(plan, rows, target_set, advance)
    else:
        _write_folder(plan, rows, target_set, command, advance)
    q = [r for r in rows if r.scheme]
    sig = sum(r.signal for r in q)
    noise = sum(r.noise for r in q)
    qparams = sum(math.prod(r.shape) for r in q)
    before = sum(r.bytes_before for r in rows)
    after = sum(r.bytes_after for r in rows)
    return {
        "model": ck.label,
        "output": str(plan.output),
        "scheme": spec.scheme.name,
        "format": plan.fmt,
        "group_size": spec.group_size,
        "symmetric": spec.symmetric,
        "optimizer": plan.cfg.optimizer,
        "device": str(plan.device),
        "num_tensors": len(rows),
        "quantized_tensors": len(q),
        "quantized_params": qparams,
        "bits_per_weight": (sum(r.bits_per_weight * math.prod(r.shape) for r in q) / qparams) if qparams else None,
        "bytes_before": before,
        "bytes_after": after,
        "compression": before / after if after else None,
        "sqnr_db": sqnr_db(sig, noise) if q else None,
        "rel_l2": math.sqrt(noise / sig) if sig > 0 else None,
        "seconds": round(time.perf_counter() - t0, 3),
        "notes": list(plan.notes),
        "tensors": [r.public() for r in rows],
    }


def _row(info, scheme, bpw, after, sig=0.0, noise=0.0) -> TensorRow:
    return TensorRow(
        info.name,
        list(info.shape),
        info.dtype,
        scheme,
        bpw,
        info.nbytes,
        after,
        sqnr_db(sig, noise) if scheme else None,
        math.sqrt(noise / sig) if scheme and sig > 0 else None,
        sig,
        noise,
    )


def _check_finite(name: str, sig: float, noise: float) -> None:
    if not (math.isfinite(sig) and math.isfinite(noise)):
        raise SurgeonError(
            f"{name} holds NaN or infinite values; quantizing it would be meaningless",
            "fix the checkpoint, or leave the tensor out with --ignore",
        )


def _write_folder(plan: QuantPlan, rows: list, target_set: set, command: str, advance) -> None:
    from modelsurgeon.ops.io.output import write_folder
    from modelsurgeon.ops.io.writer import TensorSpec, parse_size
    from modelsurgeon.ops.quantize.formats import compressed_tensors as ct

    ck, spec = plan.ck, plan.spec
    dense = plan.fmt == "dense"
    specs: list[TensorSpec] = []
    for info in ck.infos():
        if info.name in target_set and not dense:
            specs += ct.output_specs(info.name, info.shape, info.torch_dtype, spec)
        else:
            specs.append(TensorSpec(info.name, tuple(info.shape), info.torch_dtype))

    def produce():
        for name, w in ck.iter_tensors():
            info = ck.info(name)
            if name not in target_set:
                rows.append(_row(info, None, None, info.nbytes))
                yield name, w
            else:
                qw, sig, noise = _quantize_one(plan, name, w, need_dequant=dense)
                _check_finite(name, sig, noise)
                if dense:
                    out = [(name, qw.dequantized.to("cpu"))]
                else:
                    out = ct.output_tensors(name, qw, spec, plan.cfg.use_triton)
                rows.append(
                    _row(
                        info, spec.scheme.name, qw.bits_per_weight, sum(t.numel() * t.element_size() for _, t in out), sig, noise
                    )
                )
                yield from out
            advance(info.nbytes)

    update = None
    if not dense:
        qcfg = ct.quantization_config(spec, ct.ignore_list(ck.infos(), target_set, ck.config))
        update = lambda cfg: {**cfg, "quantization_config": qcfg}  # noqa: E731
    meta = {"modelsurgeon_recipe": json.dumps(_recipe(plan), sort_keys=True)}
    write_folder(
        plan.out_handle,
        specs,
        produce(),
        source=ck,
        command=command,
        max_shard_size=parse_size(plan.max_shard_size),
        metadata=meta,
        update_config=update,
    )


def _recipe(plan: QuantPlan) -> dict:
    d = plan.cfg.to_dict()
    d.update({"format": plan.fmt, "group_size": plan.spec.group_size, "symmetric": plan.spec.symmetric})
    if plan.cfg.optimizer != "hqq":
        d.pop("hqq", None)
    return d


def _write_gguf(plan: QuantPlan, rows: list, target_set: set, advance) -> None:
    from modelsurgeon.ops.quantize.formats.gguf import StreamingGGUF, heads_for, permute_rows, stored_array

    ck, spec = plan.ck, plan.spec
    by_name = {t.hf_name: t for t in plan.gguf_plan}
    out = plan.out_handle
    with out:
        writer = StreamingGGUF(out.path, plan.gguf_plan, plan.gguf_meta)
        try:
            for name, w in ck.iter_tensors([t.hf_name for t in plan.gguf_plan]):
                t = by_name[name]
                info = ck.info(name)
                n_head = heads_for(name, ck.config)
                if n_head:
                    w = permute_rows(w, n_head)
                if name in target_set:
                    qw, sig, noise = _quantize_one(plan, name, w, need_dequant=False)
                    _check_finite(name, sig, noise)
                    blocks = qw.parts["blocks"].cpu()
                    writer.write(blocks.numpy())
                    rows.append(_row(info, spec.scheme.name, qw.bits_per_weight, t.nbytes, sig, noise))
                else:
                    writer.write(stored_array(t, w))
                    rows.append(_row(info, None, None, t.nbytes))
                advance(info.nbytes)
        finally:
            writer.close()
        out.commit()
    skipped = [i.name for i in ck.infos() if i.name not in by_name]
    for n in skipped:
        rows.append(TensorRow(n, list(ck.info(n).shape), ck.info(n).dtype, None, None, ck.info(n).nbytes, 0, None, None))
