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

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint
from modelsurgeon.ops.io.output import DEFAULT_MAX_SHARD, Output
from modelsurgeon.ops.io.targets import select_targets
from modelsurgeon.recipes.quantize import QuantizeConfig

from .schemes import QuantSpec, get_scheme

if TYPE_CHECKING:
    from .formats.gguf import GGUFTensor

_QUANTIZED_DTYPES = {"I8", "U8", "I32", "F8_E4M3", "F8_E5M2", "F8_E8M0"}
# tensors that quantized checkpoints hold (compressed-tensors, GPTQ/AWQ, bitsandbytes) and plain ones do not
_QUANTIZED_NAMES = re.compile(
    r"(weight_packed|weight_scale|weight_zero_point|qweight|qzeros|\.scales|\.absmax|quant_state|\.SCB)$"
)


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

    @property
    def gguf_metadata(self) -> dict | None:
        from .formats.gguf import metadata_of

        return None if self.gguf_writer is None else metadata_of(self.gguf_writer)

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
    if plan.format != "gguf":  # GGUF checks its own shapes (3-D experts, 256-value super-blocks, fallbacks)
        check_shapes(ck, targets, spec, problems)
    if plan.format == "gguf":
        _plan_gguf(plan, problems)
    elif plan.format == "compressed-tensors":
        _plan_compressed_tensors(plan, problems)
    try:
        out.check("file" if plan.format == "gguf" else "dir")
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
    qc = (ck.config or {}).get("quantization_config")
    if qc:
        what = " ".join(str(qc.get(k)) for k in ("quant_method", "format") if qc.get(k))
        raise SurgeonError(
            f"{ck.label} is quantized with {what or 'an unnamed method'} (config.json quantization_config), which is not read yet",
            "quantize the original full-precision checkpoint; readable: compressed-tensors, fp8 block, bitsandbytes, GGUF",
        )
    for info in ck.infos():
        if _QUANTIZED_NAMES.search(info.name) or (info.dtype in _QUANTIZED_DTYPES and info.name.endswith("weight")):
            raise SurgeonError(
                f"{ck.label} is already quantized: it holds {info.name} ({info.dtype})",
                "quantize the original full-precision checkpoint",
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
    from .formats.gguf import build_writer, check_architecture, plan_tensors, with_types
    from .formats.gguf_types import choose_types

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
    try:
        n_vocab = _gemma3_vocab(ck.folder) if arch.trim_vocab else None
        tensors = plan_tensors(ck, arch, ck.config, n_vocab)
        types, notes, errors = choose_types(tensors, set(plan.targets), plan.spec.scheme, ck.config, plan.config)
        plan.notes.extend(notes)
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
        plan.gguf_writer, n_tok = build_writer(
            plan.gguf_tensors,
            arch,
            ck.config,
            ck.folder,
            plan.spec.scheme.gguf_type,
            plan.config.pre_tokenizer,
            extra_metadata=plan.imatrix.metadata() if plan.imatrix is not None else (),
        )
    except SurgeonError as e:
        problems.add(str(e))
        return
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
