"""`surgeon quantize`, second step: stream every tensor through the scheme, write the format, summarise.

    with plan_quantize(cfg, "org/model", "out/") as plan:   # ops/quantize/plan.py
        result = run_quantize(plan, progress)               # one tensor at a time, atomic output
    result.to_dict()                                        # the JSON `surgeon quantize --json` prints

The output appears only when everything was written: a folder (compressed-tensors, dense) through
``io.output.write_folder``, or one GGUF file through ``Output.file()``. A weight holding NaN or infinity stops
the run and leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads
from modelsurgeon.ops.io.checkpoint import TensorInfo
from modelsurgeon.ops.io.output import write_folder
from modelsurgeon.ops.io.writer import TensorSpec

from .plan import QuantizePlan
from .schemes import QuantizedWeight, QuantSpec, quantize_weight
from .sqnr import sqnr_db

# --------------------------------------------------------------------------------------------
# the result


@dataclass
class TensorRow:
    """One tensor of the result: what it was, what was written, and its error when it was quantized."""

    name: str
    shape: list[int]
    dtype: str
    scheme: str | None
    bits_per_weight: float | None
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None
    rel_l2: float | None
    signal: float = 0.0  # energies behind sqnr_db and rel_l2, summed for the totals; not in the JSON
    noise: float = 0.0

    @classmethod
    def of(
        cls, info: TensorInfo, scheme: str | None, bpw: float | None, after: int, sig: float = 0.0, noise: float = 0.0
    ) -> TensorRow:
        return cls(
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

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("signal")
        d.pop("noise")
        return d


@dataclass
class QuantizeResult(Result):
    """What `surgeon quantize` did: the settings it ran with, totals, and one row per tensor."""

    model: str
    output: str
    scheme: str
    format: str
    group_size: int
    symmetric: bool
    optimizer: str
    device: str
    num_tensors: int
    quantized_tensors: int
    quantized_params: int
    bits_per_weight: float | None  # over the quantized weights, weighted by their sizes
    bytes_before: int
    bytes_after: int
    compression: float | None
    sqnr_db: float | None  # of all quantized weights together: their signal and noise energies summed
    rel_l2: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    tensors: list[TensorRow] = field(default_factory=list)
    target_bpw: float | None = None  # --target-bpw: the budget, and per target the choice among the candidates
    choices: list[dict] = field(default_factory=list)
    method: str = "rtn"  # rtn | gptq | awq
    calibration: dict | None = None  # gptq, awq: the calibration plan the run followed

    def to_dict(self) -> dict:
        d = super().to_dict()
        if d["calibration"] is None:
            d.pop("calibration")
        return d

    @classmethod
    def of(cls, plan: QuantizePlan, rows: list[TensorRow], seconds: float, calibration: dict | None = None) -> QuantizeResult:
        q = [r for r in rows if r.scheme]
        sig = sum(r.signal for r in q)
        noise = sum(r.noise for r in q)
        qparams = sum(math.prod(r.shape) for r in q)
        before = sum(r.bytes_before for r in rows)
        after = sum(r.bytes_after for r in rows)
        return cls(
            model=plan.ck.label,
            output=str(plan.output.path),
            scheme=plan.spec.scheme.name,
            format=plan.format,
            group_size=plan.spec.group_size,
            symmetric=plan.spec.symmetric,
            optimizer=plan.config.optimizer,
            device=str(plan.device),
            num_tensors=len(rows),
            quantized_tensors=len(q),
            quantized_params=qparams,
            bits_per_weight=(sum(r.bits_per_weight * math.prod(r.shape) for r in q) / qparams) if qparams else None,
            bytes_before=before,
            bytes_after=after,
            compression=before / after if after else None,
            sqnr_db=sqnr_db(sig, noise) if q else None,
            rel_l2=math.sqrt(noise / sig) if sig > 0 else None,
            seconds=round(seconds, 3),
            notes=list(plan.notes),
            tensors=rows,
            method=plan.config.method,
            calibration=calibration,
        )


@dataclass
class QuantizePlanResult(Result):
    """What `surgeon quantize --dry-run` prints: the settings, the targets, and a calibrated method's plan."""

    model: str
    output: str
    scheme: str
    format: str
    method: str
    group_size: int
    symmetric: bool
    targets: int
    quantized_params: int
    notes: list[str]
    calibration: dict | None
    dry_run: bool = True


def plan_result(plan: QuantizePlan, calibration: dict | None = None) -> QuantizePlanResult:
    return QuantizePlanResult(
        plan.ck.label,
        str(plan.output.path),
        plan.spec.scheme.name,
        plan.format,
        plan.config.method,
        plan.spec.group_size,
        plan.spec.symmetric,
        len(plan.targets),
        sum(plan.ck.info(n).numel for n in plan.targets),
        list(plan.notes),
        calibration,
    )


# --------------------------------------------------------------------------------------------
# the run


def run_quantize(
    plan: QuantizePlan, progress: Progress = SILENT, command: str | None = None, source=None, calibration: dict | None = None
) -> QuantizeResult:
    """Quantize every target of the plan, one tensor at a time, and write the output. ``command`` is recorded
    in the output's metadata (the CLI passes the command line).

    ``source`` is a calibrated method's stream (``ops/calibrate``, put together by the API): (name, tensor,
    payload) in its ``order``. A payload that is a ``QuantizedWeight`` (GPTQ) is written as it is; any other
    target (AWQ's scaled weights) is rounded by the scheme as usual."""
    for n in plan.notes:
        progress.note(n)
    t0 = time.perf_counter()
    choices: list[dict] = []
    if plan.config.target_bpw is not None:
        from .budget import choose_schemes

        with cpu_threads():
            choices = choose_schemes(plan, progress)
    if source is None:
        # the ETA counts quantized tensors, the work that dominates (HQQ: seconds each); copying the embeddings
        # and norms is quick, so counting bytes said "3 s left" at 6 s of a 33 s run
        progress.start(f"quantize {plan.spec.scheme.name}", len(plan.targets), "tensors")
    if command is None:
        command = f"modelsurgeon.quantize({plan.ck.label!r}, {str(plan.output.path)!r}, scheme={plan.spec.scheme.name!r})"
    with cpu_threads():
        if plan.format == "gguf":
            rows = _write_gguf(plan, progress, source)
        else:
            rows = _write_folder(plan, progress, command, source)
    result = QuantizeResult.of(plan, rows, time.perf_counter() - t0, calibration)
    if plan.config.target_bpw is not None:
        result.target_bpw, result.choices = plan.config.target_bpw, choices
    return result


def _tensors(plan: QuantizePlan, source, names: list[str] | None = None):
    """(name, tensor, payload) from the checkpoint in its order (or ``names``), or from a calibrated source."""
    if source is None:
        for name, w in plan.ck.iter_tensors(names):
            yield name, w, None
        return
    wanted = None if names is None else set(names)
    for name, w, payload in source:
        if wanted is None or name in wanted:
            yield name, w, payload


def _premade(payload) -> QuantizedWeight | None:
    return payload if isinstance(payload, QuantizedWeight) else None


def _quantize_one(
    plan: QuantizePlan,
    name: str,
    w: torch.Tensor,
    need_dequant: bool,
    spec: QuantSpec | None = None,
    imatrix: torch.Tensor | None = None,
) -> QuantizedWeight:
    dev = plan.device
    wd = w.to(dev, non_blocking=True) if dev.type != "cpu" else w
    lo, hi = (float(v) for v in torch.aminmax(wd)) if wd.numel() else (0.0, 0.0)  # aminmax propagates NaN
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise SurgeonError(
            f"{name} holds NaN or infinite values; quantizing it would be meaningless",
            "fix the checkpoint, or leave the tensor out with --ignore",
        )
    spec = spec or plan.spec_for(name)
    qw = quantize_weight(wd, spec, plan.config.use_triton, need_dequant, imatrix)
    if not need_dequant:
        qw.dequantized = None
    sig, noise = qw.extra["signal"], qw.extra["noise"]
    if not (math.isfinite(sig) and math.isfinite(noise)):
        raise SurgeonError(
            f"{name} holds values up to {max(abs(lo), abs(hi)):.3g}, more than {spec.scheme.name} can represent "
            "(its scales overflow)",
            "leave the tensor out with --ignore, or pick another --scheme",
        )
    return qw


def _write_folder(plan: QuantizePlan, progress: Progress, command: str, source=None) -> list[TensorRow]:
    from .formats import compressed_tensors as ct

    ck = plan.ck
    dense = plan.format == "dense"
    targets = set(plan.targets)
    specs: list[TensorSpec] = []
    infos = ck.infos() if source is None else [ck.info(n) for n in source.order]
    for info in infos:
        if info.name in targets and not dense:
            specs += ct.output_specs(info.name, info.shape, info.torch_dtype, plan.spec_for(info.name))
        else:
            specs.append(TensorSpec(info.name, tuple(info.shape), info.torch_dtype))
    rows: list[TensorRow] = []
    nm: dict[str, tuple[int, bool]] = {}  # per target: zeros, and whether its input is 2:4 sparse

    def produce():
        for name, w, payload in _tensors(plan, source):
            info = ck.info(name)
            if name in targets and not dense:
                nm[name] = _two_of_four(w)
            if name not in targets:
                rows.append(TensorRow.of(info, None, None, info.nbytes))
                yield name, w
            else:
                qw = _premade(payload) or _quantize_one(plan, name, w, need_dequant=dense)
                spec = plan.spec_for(name)
                if dense:
                    out = [(name, qw.dequantized.to("cpu"))]
                else:
                    out = ct.output_tensors(name, qw, spec, plan.config.use_triton)
                after = sum(t.numel() * t.element_size() for _, t in out)
                rows.append(
                    TensorRow.of(info, spec.scheme.name, qw.bits_per_weight, after, qw.extra["signal"], qw.extra["noise"])
                )
                yield from out
            if source is None:
                progress.advance(1 if name in targets else 0)

    update = None
    if not dense:
        qcfg = ct.quantization_config(
            plan.spec, ct.ignore_list(ck.infos(), targets, ck.config), {n: plan.specs[n] for n in plan.targets if n in plan.specs}
        )
        total = sum(i.numel for i in ck.infos())
        update = lambda cfg: {**cfg, "quantization_config": {**qcfg, **sparsity_config(nm, total)}}  # noqa: E731
    meta = {"modelsurgeon_recipe": json.dumps(recipe(plan), sort_keys=True)}
    write_folder(plan.output, specs, produce(), source=ck, command=command, metadata=meta, update_config=update)
    return rows


def _two_of_four(w: torch.Tensor) -> tuple[int, bool]:
    from modelsurgeon.ops.core.sparsity import nm_compliant

    zeros = w.numel() - int(torch.count_nonzero(w))
    return zeros, bool(w.numel()) and w.shape[-1] % 4 == 0 and 2 * zeros >= w.numel() and nm_compliant(w, 2, 4)


def sparsity_config(nm: dict[str, tuple[int, bool]], total_params: int) -> dict:
    """compressed-tensors' ``sparsity_config`` when every quantized weight came in 2:4 sparse (``surgeon prune
    --pattern 2:4`` before): kept inside the quantized codes (format ``dense``), the structure and the modules
    named, as llm-compressor records a 2:4 model it quantized, so a loader knows; nothing otherwise."""
    from .formats.compressed_tensors import module_name

    if not nm or not all(ok for _, ok in nm.values()):
        return {}
    return {
        "sparsity_config": {
            "format": "dense",
            "global_sparsity": sum(z for z, _ in nm.values()) / max(total_params, 1),
            "ignore": [],
            "registry_requires_subclass": False,
            "sparsity_structure": "2:4",
            "targets": [module_name(n) for n in nm],
        }
    }


def recipe(plan: QuantizePlan) -> dict:
    """The settings as run, for the output's metadata: the config, with the format, group size and symmetry
    it resolved to; the HQQ settings only when HQQ ran."""
    d = plan.config.to_dict()
    d.update({"format": plan.format, "group_size": plan.spec.group_size, "symmetric": plan.spec.symmetric})
    if plan.config.optimizer != "hqq":
        d.pop("hqq", None)
    return d


def _quantize_gguf_tensor(plan: QuantizePlan, t, w: torch.Tensor, spec: QuantSpec) -> tuple[QuantizedWeight, float, float]:
    """One GGUF tensor into its block type: rows of ``t.shape[-1]`` values; under ``--imatrix`` each expert of a
    3-D tensor with its own slice of the importance weights, as llama-quantize does."""
    cols = t.shape[-1]
    im = None if plan.imatrix is None else plan.imatrix.weights.get(t.name)
    if im is not None and im.size != cols * (t.shape[0] if len(t.shape) == 3 else 1):
        im = None  # token_embd of another size: llama-quantize quantizes it without weights too
    if im is None or len(t.shape) != 3:
        qw = _quantize_one(plan, t.hf_name, w.reshape(-1, cols), False, spec, None if im is None else torch.from_numpy(im))
        return qw, qw.extra["signal"], qw.extra["noise"]
    parts, sig, noise = [], 0.0, 0.0
    for e in range(t.shape[0]):
        q = _quantize_one(plan, t.hf_name, w[e].reshape(-1, cols), False, spec, torch.from_numpy(im[e * cols : (e + 1) * cols]))
        parts.append(q.parts["blocks"])
        sig += q.extra["signal"]
        noise += q.extra["noise"]
    return QuantizedWeight({"blocks": torch.cat(parts)}, None, q.bits_per_weight), sig, noise


def _write_gguf(plan: QuantizePlan, progress: Progress, source=None) -> list[TensorRow]:
    """Header first (from the plan), then each GGUF tensor: read its sources, apply the converter's changes,
    quantize it to its type or store it as a float type. ``source``: a calibrated method's stream (GPTQ's
    blocks are written as they are where the tensor's type is GPTQ's scheme)."""
    from .formats.gguf import FLOAT_TYPES, StreamingGGUF, permute_rows, source_tensor, stored_array
    from .schemes import QuantSpec, block_scheme

    ck = plan.ck
    if source is not None:  # llama.cpp finds tensors by name: list them in the stream's order, so it streams
        from .plan import reorder_gguf

        reorder_gguf(plan, source.order)
    targets = set(plan.targets)
    payloads: dict = {}
    rows: list[TensorRow] = []
    cache: dict[str, torch.Tensor] = {}  # a fused expert tensor feeds two GGUF tensors: keep the last read
    wanted = [n for t in plan.gguf_tensors for n in t.sources]

    def from_source():
        for name, w, payload in _tensors(plan, source, list(dict.fromkeys(wanted))):
            if _premade(payload) is not None:
                payloads[name] = payload
            yield name, w

    stream = ck.iter_tensors(list(dict.fromkeys(wanted))) if source is None else from_source()

    def read(name: str) -> torch.Tensor:
        while name not in cache:
            got, w = next(stream)
            if len(cache) > 1 and got not in cache:
                cache.pop(next(iter(cache)))
            cache[got] = w
        return cache[name]

    with plan.output.file(expected_bytes=sum(t.nbytes for t in plan.gguf_tensors)) as out:
        writer = StreamingGGUF(out.path, plan.gguf_writer)
        try:
            for t in plan.gguf_tensors:
                w = source_tensor(t, read)
                before = sum(ck.info(n).nbytes for n in dict.fromkeys(t.sources))
                info = ck.info(t.sources[0]) if t.sources else None
                premade = payloads.pop(t.sources[0], None) if len(t.sources) == 1 else None
                if t.qtype in FLOAT_TYPES:
                    writer.write(stored_array(t, w))
                    row = TensorRow(
                        t.name, list(t.shape), info.dtype if info else "F32", None, None, before, t.nbytes, None, None
                    )
                else:
                    spec = plan.spec_for(t.hf_name)  # an override's or --target-bpw's, where it chose this type
                    if premade is not None and t.qtype == spec.scheme.gguf_type and t.rows is None and not t.shift:
                        # GPTQ's blocks, rows in HF order: permuted as the converter permutes the weight
                        blocks = premade.parts["blocks"].cpu()
                        qw, sig, noise = premade, premade.extra["signal"], premade.extra["noise"]
                        writer.write((permute_rows(blocks, t.heads) if t.heads else blocks).numpy().reshape(-1))
                    else:
                        tspec = spec if t.qtype == spec.scheme.gguf_type else QuantSpec(block_scheme(t.qtype), 32, True)
                        qw, sig, noise = _quantize_gguf_tensor(plan, t, w, tspec)
                        writer.write(qw.parts["blocks"].cpu().numpy().reshape(-1))
                    row = TensorRow(
                        t.name,
                        list(t.shape),
                        info.dtype if info else "F32",
                        t.qtype.lower(),
                        qw.bits_per_weight,
                        before,
                        t.nbytes,
                        sqnr_db(sig, noise),
                        math.sqrt(noise / sig) if sig > 0 else None,
                        sig,
                        noise,
                    )
                rows.append(row)
                if source is None:
                    progress.advance(sum(1 for n in t.sources if n in targets))
        finally:
            writer.close()
        out.commit()
    return rows
