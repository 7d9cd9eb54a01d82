"""`surgeon quantize`, first step: open the checkpoint and check everything before a tensor is read.

    cfg = QuantizeConfig(scheme="w4a16")                   # names and what the scheme takes: checked already
    with plan_quantize(cfg, "org/model", "out/") as plan:  # headers only; every problem reported at once
        result = run_quantize(plan, progress)              # ops/quantize/run.py: stream, write, summarise

Formats (``--format``): ``compressed-tensors`` (a folder vLLM/transformers load), ``gguf`` (one file for
llama.cpp), ``dense`` (quantize then dequantize back into the original dtype: what the scheme costs).

A quantized input that ``ops/io`` reads comes in dequantized (and a note warns that its values are rounded
twice); the plan refuses one that nothing reads, and a selection that is empty, at once (nothing else
can be checked then); the other problems (tensor shapes, the GGUF layout and tokenizer, tensor names the
format cannot hold, an existing output) are collected and reported together. It creates nothing: the
output is only checked here, and ``run_quantize`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint, quantized_reason
from modelsurgeon.ops.io.output import DEFAULT_MAX_SHARD, Output
from modelsurgeon.ops.io.targets import select_targets
from modelsurgeon.recipes.quantize import QuantizeConfig

from .schemes import QuantSpec, get_scheme

if TYPE_CHECKING:
    from .formats.gguf import GGUFTensor


@dataclass
class QuantizePlan:
    """What `surgeon quantize` will do: the open checkpoint, the resolved scheme, the targets, the output."""

    config: QuantizeConfig
    ck: Checkpoint
    spec: QuantSpec
    format: str  # compressed-tensors, gguf or dense (never auto)
    targets: list[str]
    output: Output
    device: torch.device
    notes: list[str] = field(default_factory=list)  # told to the user before the run, and kept in the result
    gguf_tensors: list[GGUFTensor] | None = None  # --format gguf: the file's tensors, in order
    gguf_writer: object | None = None  # --format gguf: gguf-py's GGUFWriter holding the whole header
    imatrix: object | None = None  # --imatrix: formats.gguf_imatrix.ImportanceMatrix, checked against the tensors
    gguf_extra: dict = field(default_factory=dict)  # --format gguf: metadata added after the plan (provenance)
    specs: dict[str, QuantSpec] = field(default_factory=dict)  # per target, where overrides change ``spec``

    def spec_for(self, name: str) -> QuantSpec:
        """The scheme and settings target ``name`` is quantized with (``spec`` unless an override says otherwise)."""
        return self.specs.get(name, self.spec)

    @property
    def gguf_metadata(self) -> dict | None:
        from .formats.gguf import metadata_of

        return None if self.gguf_writer is None else metadata_of(self.gguf_writer)

    def add_gguf_metadata(self, meta: dict) -> None:
        """Add (or replace) string or integer keys of the GGUF header, kept when the header is rebuilt."""
        from .formats.gguf import set_metadata

        self.gguf_extra.update(meta)
        if self.gguf_writer is not None:
            set_metadata(self.gguf_writer, meta)

    @property
    def bytes_to_read(self) -> int:
        if self.gguf_tensors is None:
            return sum(self.ck.info(n).nbytes for n in self.ck.names())
        return sum(self.ck.info(n).nbytes for t in self.gguf_tensors for n in dict.fromkeys(t.sources))

    def close(self) -> None:
        self.ck.close()

    def __enter__(self) -> QuantizePlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_quantize(
    cfg: QuantizeConfig,
    model: str,
    output: str,
    *,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
    revision: str | None = None,
) -> QuantizePlan:
    """Open MODEL (headers only) and check that ``cfg`` can quantize it into ``output``."""
    out = Output.of(output, force, max_shard_size)  # a bad size fails before anything is opened
    device = resolve_device(cfg.device)
    ck = open_checkpoint(model, revision)
    try:
        return _plan(cfg, ck, out, device)
    except BaseException:
        ck.close()
        raise


def _plan(cfg: QuantizeConfig, ck: Checkpoint, out: Output, device: torch.device) -> QuantizePlan:
    notes: list[str] = []
    spec = quant_spec(cfg, notes)
    check_not_quantized(ck, notes)
    targets = select_targets(ck, cfg.include, cfg.ignore, "--include", "--ignore")
    if not targets:
        raise SurgeonError(
            f"no tensor of {ck.label} is selected for quantization",
            "the default takes 2-D linear weights; choose tensors with --include REGEX",
        )
    plan = QuantizePlan(cfg, ck, spec, cfg.output_format, targets, out, device, notes)
    problems = Problems(f"the quantization of {ck.label}")
    groups = per_tensor_specs(plan)
    if plan.format != "gguf":  # GGUF checks its own shapes (3-D experts, 256-value super-blocks, fallbacks)
        for s, names in groups:
            check_shapes(ck, names, s, problems)
        for c in cfg.candidates:  # --target-bpw: every candidate must fit every target
            check_shapes(ck, targets, quant_spec(cfg.candidate(c), []), problems)
    if plan.format == "gguf":
        _plan_gguf(plan, problems)
    elif plan.format == "compressed-tensors":
        _plan_compressed_tensors(plan, problems)
    try:
        out.check("file" if plan.format == "gguf" else "dir", inputs=ck.input_paths())
    except SurgeonError as e:
        problems.add(str(e))
    problems.raise_if_any()
    return plan


def quant_spec(cfg: QuantizeConfig, notes: list[str]) -> QuantSpec:
    """The scheme with this run's group size and symmetry. Under ``--optimizer hqq`` a group-wise integer
    scheme takes HQQ's own group size unless ``--group-size`` is given (and a note says so)."""
    s = get_scheme(cfg.scheme)
    hqq = cfg.hqq if cfg.optimizer == "hqq" else None
    group = s.group_size
    if cfg.group_size is not None:
        group = cfg.group_size
    elif hqq is not None and s.family == "int" and s.group_size != -1:
        group = hqq.group_size
        notes.append(f"hqq: group size {group} (HQQ's default); pass --group-size {s.group_size} for {s.name}'s usual one")
    return QuantSpec(s, group, cfg.symmetric, hqq)


def per_tensor_specs(plan: QuantizePlan) -> list[tuple[QuantSpec, list[str]]]:
    """Fill ``plan.specs`` from the config's overrides; the targets grouped by the spec they get."""
    cfg = plan.config
    made: dict[QuantizeConfig, QuantSpec] = {cfg: plan.spec}
    groups: dict[int, tuple[QuantSpec, list[str]]] = {}
    for name in plan.targets:
        c = cfg.for_tensor(name)
        if c not in made:
            notes: list[str] = []
            made[c] = quant_spec(c, notes)
            plan.notes.extend(n for n in notes if n not in plan.notes)
        s = made[c]
        if s is not plan.spec:
            plan.specs[name] = s
        groups.setdefault(id(s), (s, []))[1].append(name)
    return list(groups.values())


def check_not_quantized(ck: Checkpoint, notes: list[str]) -> None:
    """A quantized input that ``ops/io`` reads (compressed-tensors, FP8 block, bitsandbytes, GGUF) comes in
    dequantized: it is quantized again, with a warning that its values are rounded twice. One that nothing
    reads (GPTQ, AWQ ..., or stray quantized tensors without a config) is refused."""
    if ck.source_format is not None:
        notes.append(
            f"warning: {ck.label} is already quantized ({ck.source_format}); its dequantized values are quantized "
            "again, so they are rounded twice. Start from the original weights where you have them"
        )
        return
    reason = quantized_reason(ck)
    if reason is not None:
        raise SurgeonError(
            f"{ck.label} is already quantized ({reason}) in a form that is not read yet",
            "quantize the original full-precision checkpoint; readable: compressed-tensors, fp8 block, bitsandbytes, GGUF",
        )


def each_tensor(problems: Problems, messages: list[str]) -> None:
    """One kind of problem found in several tensors, as one line: the first in full, then how many more."""
    if messages:
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        problems.add(messages[0] + more)


def check_shapes(ck: Checkpoint, targets: list[str], spec: QuantSpec, problems: Problems) -> None:
    """Every target is 2-D and its rows split into whole groups (NF4: the whole tensor into blocks)."""
    not_2d, rows = [], []
    for name in targets:
        info = ck.info(name)
        if len(info.shape) != 2:
            not_2d.append(
                f"{name} is {len(info.shape)}-D {list(info.shape)}; quantize takes 2-D weights (leave it out with --ignore)"
            )
            continue
        cols = info.shape[1]
        g = spec.group_for(cols)
        if g <= 0 or cols % g:
            flag = {"gguf": "the GGUF block size", "nvfp4": "NVFP4's group", "mxfp4": "MXFP4's group"}.get(
                spec.scheme.family, "--group-size"
            )
            rows.append(
                f"{name} has rows of {cols} values, not a multiple of the group size {g} ({flag}); "
                f"pick a size that divides {cols} or leave the tensor out with --ignore"
            )
    each_tensor(problems, not_2d)
    each_tensor(problems, rows)
    if spec.scheme.family == "nf4":
        each_tensor(
            problems,
            [
                f"{n} has {ck.info(n).numel} values, not a multiple of the block size {spec.group_size}"
                for n in targets
                if ck.info(n).numel % spec.group_size
            ],
        )


def _plan_compressed_tensors(plan: QuantizePlan, problems: Problems) -> None:
    from .formats.compressed_tensors import module_name

    bad = []
    for n in plan.targets:
        try:
            module_name(n)
        except SurgeonError as e:
            bad.append(str(e))
    each_tensor(problems, bad)
    if plan.spec.scheme.name == "nvfp4":
        plan.notes.append(
            "note: nvfp4 quantizes activations too; without calibration data each layer's input_global_scale is 1.0 "
            "(activation groups with a max above 2688 clip). Use nvfp4a16 for weights only"
        )
    if not plan.spec.symmetric and plan.spec.scheme.ct_format == "pack-quantized":
        plan.notes.append(
            "warning: transformers (5.23, compressed-tensors 0.20) cannot load asymmetric pack-quantized "
            "checkpoints (weight_zero_point shape mismatch); vLLM can. Drop --asym for transformers"
        )


def _plan_gguf(plan: QuantizePlan, problems: Problems) -> None:
    """The architecture, the file's tensors and their types, the tokenizer, and the header."""
    from .formats.gguf import check_architecture
    from .formats.gguf_arch import HParams

    ck = plan.ck
    try:
        _, arch = check_architecture(ck.config, ck.label)
    except SurgeonError as e:  # not a known architecture: nothing below applies
        problems.add(str(e))
        return
    if not ck.resolved.path.is_dir() and ck.source_format != "gguf":  # a GGUF source brings its own config and tokenizer
        problems.add(
            "--format gguf needs the model folder (config.json and tokenizer beside the weights): "
            "give the folder, not the .safetensors file"
        )
        return
    emb, rows = "model.embed_tokens.weight", HParams(ck.config).cfg.get("vocab_size")
    if rows is not None and emb in ck and ck.info(emb).shape[:1] != (rows,):
        problems.add(
            f"{emb} has {ck.info(emb).shape[0] if ck.info(emb).shape else 0} rows but config.json says vocab_size "
            f"{rows}: fix config.json"
        )
        return
    try:
        _gguf_layout(plan, arch, problems)
    except SurgeonError as e:
        problems.add(str(e))


def replan_gguf(plan: QuantizePlan) -> None:
    """The GGUF layout and header again, after --target-bpw has chosen each target's scheme (``plan.specs``)."""
    from .formats.gguf import check_architecture

    problems = Problems(f"the quantization of {plan.ck.label}")
    _gguf_layout(plan, check_architecture(plan.ck.config, plan.ck.label)[1], problems)
    problems.raise_if_any()


def reorder_gguf(plan: QuantizePlan, order: list[str]) -> None:
    """List the GGUF tensors in ``order`` (a calibrated method's stream: one layer at a time) and rebuild the
    header to match, so the writer streams; llama.cpp finds tensors by name, so any order loads."""
    from .formats.gguf import build_writer, check_architecture

    pos = {n: i for i, n in enumerate(order)}
    plan.gguf_tensors = sorted(plan.gguf_tensors, key=lambda t: min((pos.get(s, len(pos)) for s in t.sources), default=-1))
    arch = check_architecture(plan.ck.config, plan.ck.label)[1]
    extra = [*(plan.imatrix.metadata() if plan.imatrix is not None else ()), *plan.gguf_extra.items()]
    plan.gguf_writer, _ = build_writer(
        plan.gguf_tensors, arch, plan.ck.config, plan.ck.folder, plan.spec.scheme.gguf_type, plan.config.pre_tokenizer, extra
    )


def _gguf_layout(plan: QuantizePlan, arch, problems: Problems) -> None:
    """The file's tensors, their types (the scheme's, or llama-quantize's mixture; a target's own scheme from
    an override or --target-bpw replaces the choice for it), the importance matrix check, and the header."""
    from .formats.gguf import build_writer, plan_tensors, with_types
    from .formats.gguf_types import choose_types

    ck = plan.ck
    n_vocab = _gemma3_vocab(ck.folder) if arch.trim_vocab else None
    tensors = plan_tensors(ck, arch, ck.config, n_vocab)
    overrides = {n: s.scheme for n, s in plan.specs.items()}
    types, notes, errors = choose_types(tensors, set(plan.targets), plan.spec.scheme, ck.config, plan.config, overrides)
    plan.notes.extend(n for n in notes if n not in plan.notes)
    if errors:
        each_tensor(problems, errors)
        return
    plan.gguf_tensors = with_types(tensors, types)
    if plan.config.imatrix is not None:
        from .formats.gguf_imatrix import check_against, load_imatrix

        plan.imatrix = load_imatrix(plan.config.imatrix)
        bad = check_against(plan.imatrix, plan.gguf_tensors, ck.label)
        if bad:
            each_tensor(problems, bad)
            return
    extra = [*(plan.imatrix.metadata() if plan.imatrix is not None else ()), *plan.gguf_extra.items()]
    plan.gguf_writer, n_tok = build_writer(
        plan.gguf_tensors, arch, ck.config, ck.folder, plan.spec.scheme.gguf_type, plan.config.pre_tokenizer, extra
    )
    n_vocab = int(ck.config.get("vocab_size") or n_tok)
    if n_tok != n_vocab:
        problems.add(
            f"the tokenizer of {ck.label} has {n_tok} tokens but config.json says vocab_size {n_vocab}: "
            "llama.cpp needs one token per embedding row; fix the tokenizer or the config"
        )


def _gemma3_vocab(folder) -> int | None:
    """The rows of token_embd Gemma 3's converter keeps: the tokenizer's real tokens."""
    import json

    if (folder / "tokenizer.model").is_file():
        return None  # the SentencePiece vocabulary is padded to vocab_size: nothing is cut
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return len(tj["model"]["vocab"]) + len(tj.get("added_tokens") or [])
