"""`surgeon quantize` settings: the one place that holds their defaults, and what each scheme allows.

The CLI builds a ``QuantizeConfig`` from its flags (``QuantizeConfig.build`` reads a recipe too); ``ops/``
takes it. ``validate`` checks every value before any file is opened: the scheme's name, the format, the
optimizer, the group size, the regexes, and whether the scheme takes the format, ``--asym``,
``--group-size`` and ``--optimizer hqq`` at all.

Those rules come from ``SCHEME_RULES``: per scheme, its defaults (group size, symmetry) and what it accepts,
with no torch and no math. ``ops/quantize/schemes.py`` registers each scheme's implementation (bits, the
formats' details, the math) under the same names, in the same order, and checks at import that the two agree.
A ``None`` among the settings below means "the scheme's own default".

Per-tensor settings come from ``overrides`` (a recipe's list of ``{match: REGEX, scheme, group_size, asym}``)
under the one rule of ``recipes/overrides.py``: every matching entry applies in order, a later one winning
for each setting it names. An entry that names a scheme starts from that scheme's group size and symmetry
unless it names them too. Every scheme must fit the one output format::

    scheme: w4a16
    overrides:
      - {match: 'mlp\\.down_proj', scheme: w8a16}      # 8-bit down_proj, 4-bit elsewhere
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property

from modelsurgeon.ops.core.errors import UsageError
from modelsurgeon.ops.core.registry import Registry

from .base import Config, check_int, check_regex, did_you_mean
from .calibrate import CalibrationConfig, check_positive
from .overrides import Override, parse_overrides, settings_for

OVERRIDE_SETTINGS = ("scheme", "group_size", "asym")

OPTIMIZERS = ("rtn", "hqq")
METHODS = ("rtn", "gptq", "awq")  # rtn: data-free; gptq, awq: calibrated, one decoder layer at a time (ops/calibrate)
CALIBRATED_FAMILIES = ("int", "gguf")  # the schemes GPTQ and AWQ produce (ops/quantize/grid.py)
FORMATS = ("auto", "compressed-tensors", "gguf", "dense")


# --------------------------------------------------------------------------------------------
# what each scheme allows


@dataclass(frozen=True)
class SchemeRules:
    """A quantization scheme as the settings see it: its defaults and what it accepts."""

    name: str
    family: str  # "int" | "fp8" | "nf4" | "binary" | "gguf" | "fp8_block" | "nvfp4" | "mxfp4": which math quantizes it
    group_size: int  # the default; -1 = one group per row
    formats: tuple[str, ...] = ("dense",)  # formats that can hold it; the first is the default
    symmetric: bool = True  # the default
    group_fixed: bool = False  # the group size is part of the format (GGUF blocks, fp8 per channel)
    asym_capable: bool = False
    hqq_capable: bool = False


SCHEME_RULES: Registry[SchemeRules] = Registry("quantization scheme")
_CT = ("compressed-tensors", "dense")
for _rules in (
    SchemeRules("w4a16", "int", 128, _CT, asym_capable=True, hqq_capable=True),
    SchemeRules("w8a16", "int", 128, _CT, asym_capable=True, hqq_capable=True),
    SchemeRules("w8a8", "int", -1, _CT, asym_capable=True, hqq_capable=True),
    SchemeRules("fp8", "fp8", -1, _CT, group_fixed=True),
    SchemeRules("nf4", "nf4", 64),
    SchemeRules("binary", "binary", 128),
    *(
        SchemeRules(name, "gguf", 32, ("gguf", "dense"), symmetric=sym, group_fixed=True, hqq_capable=True)
        for name, sym in (("q8_0", True), ("q4_0", True), ("q4_1", False), ("q5_0", True), ("q5_1", False))
    ),
):
    SCHEME_RULES.add(_rules.name, _rules)

# --- GGUF (issue 12): unquantized GGUF files, as llama.cpp's converter writes them ---------------------------
for _name in ("f32", "f16", "bf16"):
    SCHEME_RULES.add(_name, SchemeRules(_name, "gguf", 32, ("gguf",), group_fixed=True))


# --- GGUF (issue 12): k-quants in super-blocks of 256. The mixtures choose a type per tensor as llama-quantize
# does, so they exist only as GGUF; the single types (q3_k, q4_k, q5_k) can also be written dense --------------
for _name in ("q3_k", "q4_k", "q5_k"):
    SCHEME_RULES.add(_name, SchemeRules(_name, "gguf", 256, ("gguf", "dense"), group_fixed=True))
for _name in ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"):
    SCHEME_RULES.add(_name, SchemeRules(_name, "gguf", 256, ("gguf",), group_fixed=True))
# schemes whose search an importance matrix weights (llama-quantize: every type but Q8_0 and the float ones)
IMATRIX_SCHEMES = tuple(n for n, r in SCHEME_RULES.items() if r.family == "gguf" and n not in ("q8_0", "f32", "f16", "bf16"))

# --- issue 13: the compressed-tensors schemes vLLM serves on new GPUs, and 2/3-bit integers
for _rules in (
    SchemeRules("w2a16", "int", 128, _CT, asym_capable=True, hqq_capable=True),
    SchemeRules("w3a16", "int", 128, _CT, asym_capable=True, hqq_capable=True),
    SchemeRules("fp8-block", "fp8_block", -1, _CT, group_fixed=True),
    SchemeRules("nvfp4", "nvfp4", 16, _CT, group_fixed=True),
    SchemeRules("nvfp4a16", "nvfp4", 16, _CT, group_fixed=True),
    SchemeRules("mxfp4", "mxfp4", 32, _CT, group_fixed=True),
):
    SCHEME_RULES.add(_rules.name, _rules)


def default_candidates(rules: SchemeRules, fmt: str) -> list[str]:
    """What --target-bpw chooses among by default: the schemes of ``rules``' kind that ``fmt`` holds (GGUF
    types; the weight-only integers w2a16 ... w8a16; else the scheme alone)."""
    if rules.family == "gguf":  # the single block types (the ones dense can hold too), not mixtures or floats
        return [r.name for r in SCHEME_RULES.values() if r.family == "gguf" and fmt in r.formats and "dense" in r.formats]
    if rules.family == "int" and rules.name.endswith("a16"):
        return [r.name for r in SCHEME_RULES.values() if r.family == "int" and r.name.endswith("a16") and fmt in r.formats]
    return [rules.name]


def scheme_rules(name: str) -> SchemeRules:
    """The rules of scheme ``name`` (any case), or a usage error listing the known schemes."""
    return SCHEME_RULES.lookup(name.strip().lower())


# --------------------------------------------------------------------------------------------
# the settings


@dataclass(frozen=True)
class HQQConfig:
    """Half-quadratic refinement (Badri & Shaji 2023, mobiusml/hqq), data-free.

    Defaults are HQQ's own (``hqq_base_quant_config`` and ``optimize_weights_proximal``): 4 bits,
    group 64, 20 iterations, lp 0.7, beta 10, kappa 1.01. The bit width always comes from the scheme;
    ``group_size`` applies to group-wise integer schemes when ``--group-size`` is not given.
    """

    nbits: int = 4
    group_size: int = 64
    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01

    def __post_init__(self) -> None:
        check_int(self.nbits, "hqq.nbits", minimum=1)
        check_int(self.group_size, "hqq.group_size", minimum=1)
        check_int(self.iters, "hqq.iters", minimum=0)
        for name in ("lp_norm", "beta", "kappa"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UsageError(f"hqq.{name} must be a positive number, got {v!r}")

    @classmethod
    def from_mapping(cls, data: Mapping) -> HQQConfig:
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise UsageError(f"hqq has unknown keys: {', '.join(map(str, unknown))}{did_you_mean(unknown[0], known)}")
        return cls(**data)


@dataclass(frozen=True)
class QuantizeConfig(Config):
    """Everything that decides what `surgeon quantize` does to a checkpoint."""

    KIND = "quantize"
    VERSION = 1

    scheme: str | None = None  # a name of SCHEME_RULES (any case; stored lower case)
    format: str = "auto"  # auto: the scheme's natural format
    group_size: int | None = None  # None: the scheme's default; -1: one group per row (per channel)
    asym: bool = False
    optimizer: str = "rtn"
    hqq: HQQConfig = field(default_factory=HQQConfig)
    include: str | None = None  # replaces the default rule (2-D linear weights) with a regex
    ignore: str | None = None  # removes matches from the selection
    device: str = "auto"
    use_triton: bool | None = None  # None: Triton on CUDA, the torch reference elsewhere
    pre_tokenizer: str | None = None  # --format gguf: llama.cpp's pre-tokenizer name when the check-text hash is unknown
    imatrix: str | None = None  # --format gguf: llama-imatrix's file (legacy .dat or GGUF) weighting the block search
    overrides: tuple[Override, ...] = ()  # [{match: REGEX, scheme, group_size, asym}], recipes/overrides.py's rule
    target_bpw: float | None = None  # choose a scheme per tensor among ``candidates`` to average this many bits
    candidates: tuple[str, ...] = ()  # for target_bpw; default: the schemes of the output format like ``scheme``
    method: str = "rtn"  # rtn | gptq | awq
    # calibrated methods only (None for rtn)
    calib: CalibrationConfig | None = None
    act_order: bool | None = None  # GPTQ: columns by descending diag(H), with static groups (True)
    dampening: float | None = None  # GPTQ: percdamp x mean(diag H) added to the diagonal (0.01)
    blocksize: int | None = None  # GPTQ: columns per lazy update block (128)

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r} is unknown", f"use one of: {', '.join(FORMATS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer!r} is unknown", f"use one of: {', '.join(OPTIMIZERS)}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g == 0 or g < -1):
            raise UsageError(f"--group-size {g} is invalid", "give a positive size, or -1 for one group per row")
        if isinstance(self.hqq, Mapping):
            self._set("hqq", HQQConfig.from_mapping(self.hqq))
        elif not isinstance(self.hqq, HQQConfig):
            raise UsageError(f"hqq must be a mapping of HQQ settings, got {self.hqq!r}")
        if self.pre_tokenizer is not None:
            if not isinstance(self.pre_tokenizer, str) or not self.pre_tokenizer.strip():
                raise UsageError("--pre-tokenizer needs a name", "a llama.cpp pre-tokenizer such as llama-bpe, qwen2, smollm")
            if self.format not in ("gguf", "auto"):
                raise UsageError("--pre-tokenizer applies to --format gguf only")
        if self.imatrix is not None and (not isinstance(self.imatrix, str) or not self.imatrix.strip()):
            raise UsageError("--imatrix needs a file", "an importance matrix from llama-imatrix (imatrix.gguf or imatrix.dat)")
        if self.include is not None:
            check_regex(self.include, "--include")
        if self.ignore is not None:
            check_regex(self.ignore, "--ignore")
        if not isinstance(self.scheme, str) or not self.scheme.strip():
            raise UsageError("no quantization scheme given", f"pass --scheme, one of: {', '.join(SCHEME_RULES)}")
        rules = scheme_rules(self.scheme)
        self._set("scheme", rules.name)
        self._check_scheme_takes_the_settings(rules)
        if self.imatrix is not None:
            if rules.name not in IMATRIX_SCHEMES:
                raise UsageError(
                    f"--imatrix does not apply to {rules.name}",
                    "it weights the block search of " + ", ".join(IMATRIX_SCHEMES),
                )
            if self.output_format != "gguf":
                raise UsageError("--imatrix applies to --format gguf only")
            if self.optimizer == "hqq":
                raise UsageError("--imatrix and --optimizer hqq are mutually exclusive", "pick one way to refine the blocks")
        self._set("overrides", parse_overrides(self.overrides, OVERRIDE_SETTINGS))
        for o in self.overrides:  # each entry on its own over the base; combinations are checked per tensor
            self._with(dict(o.settings), f"override {o.match!r}")
        self._check_budget(rules)
        self._check_method(rules)

    def _check_budget(self, rules: SchemeRules) -> None:
        if isinstance(self.candidates, str):
            self._set("candidates", tuple(c for c in self.candidates.split(",") if c.strip()))
        if self.target_bpw is None:
            if self.candidates:
                raise UsageError("--candidates chooses among schemes for --target-bpw", "give --target-bpw BITS too")
            return
        b = self.target_bpw
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise UsageError(f"--target-bpw must be a positive number of bits per weight, got {b!r}")
        self._set("target_bpw", float(b))
        if self.overrides:
            raise UsageError("--target-bpw chooses every tensor's scheme, so a recipe's overrides cannot", "give one of them")
        cands = [scheme_rules(str(c)).name for c in self.candidates] or default_candidates(rules, self.output_format)
        if rules.name not in cands:
            cands.append(rules.name)
        cands = sorted(set(cands), key=list(SCHEME_RULES).index)
        for c in cands:
            r = SCHEME_RULES[c]
            if r.family == "gguf" and "dense" not in r.formats:
                raise UsageError(
                    f"--target-bpw chooses one GGUF type per tensor, and {c} is not one (a mixture or a float type)",
                    "use single types: " + ", ".join(default_candidates(r, "gguf")),
                )
        for c in cands:
            self.candidate(c)
        self._set("candidates", tuple(cands))

    def candidate(self, scheme: str) -> QuantizeConfig:
        """This config with ``scheme`` (for --target-bpw), in the run's format, group size and symmetry."""
        return self._with({"scheme": scheme, "group_size": self.group_size, "asym": self.asym}, f"--candidates {scheme}")

    def _with(self, settings: dict, where: str) -> QuantizeConfig:
        """This config with an override's settings, in the format of the whole run."""
        if not settings:
            return self
        s = dict(settings)
        if "scheme" in s:
            s.setdefault("group_size", None)
            s.setdefault("asym", False)
        try:
            return dataclasses.replace(
                self, overrides=(), target_bpw=None, candidates=(), imatrix=None, format=self.output_format, **s
            )
        except UsageError as e:
            raise UsageError(f"{where}: {e.message}", e.hint) from None

    def for_tensor(self, name: str) -> QuantizeConfig:
        """The settings tensor ``name`` is quantized with: this config under its matching overrides."""
        settings = settings_for(self.overrides, name, {"scheme": ("group_size", "asym")})
        key = tuple(sorted(settings.items()))
        cache = self._per_tensor
        if key not in cache:
            cache[key] = self._with(settings, f"the overrides of {name}")
        return cache[key]

    @cached_property
    def _per_tensor(self) -> dict:
        return {}

    @classmethod
    def convert(cls, data: dict, source: str) -> dict:
        from modelsurgeon.ops.core.errors import SurgeonError

        try:
            data["overrides"] = parse_overrides(data.get("overrides") or [], OVERRIDE_SETTINGS)
        except UsageError as e:
            raise SurgeonError(f"{source}: {e.message}", e.hint) from None
        return data

    def _check_method(self, s: SchemeRules) -> None:
        if self.method not in METHODS:
            raise UsageError(
                f"--method {self.method!r} is unknown{did_you_mean(self.method, METHODS)}", f"use one of: {', '.join(METHODS)}"
            )
        extra = ("calib", "act_order", "dampening", "blocksize")
        if self.method == "rtn":
            given = [f for f in extra if getattr(self, f) is not None]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise UsageError(f"{flag} applies to the calibrated methods (--method gptq or awq)")
            return
        if self.overrides or self.target_bpw is not None:
            raise UsageError(
                f"--method {self.method} quantizes every target with one scheme; per-tensor overrides and --target-bpw are not supported with it yet",
                "drop the overrides / --target-bpw, or use --method rtn",
            )
        if s.family not in CALIBRATED_FAMILIES:
            able = ", ".join(x.name for x in SCHEME_RULES.values() if x.family in CALIBRATED_FAMILIES)
            raise UsageError(f"--method {self.method} cannot produce scheme {s.name}", f"it quantizes onto integer grids: {able}")
        if self.optimizer != "rtn":
            raise UsageError(
                f"--method {self.method} and --optimizer {self.optimizer} are mutually exclusive", "give one of them"
            )
        self._set("calib", CalibrationConfig.coerce(self.calib))
        if self.method == "awq":
            given = [f for f in ("act_order", "dampening", "blocksize") if getattr(self, f) is not None]
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')} applies to --method gptq, not awq")
            return
        self._set("act_order", True if self.act_order is None else bool(self.act_order))
        self._set("dampening", check_positive(0.01 if self.dampening is None else self.dampening, "--dampening"))
        self._set("blocksize", check_int(128 if self.blocksize is None else self.blocksize, "--blocksize", minimum=1))

    @classmethod
    def flags_over(cls, recipe: dict, flags: dict) -> dict:
        from .prune import merge_calib

        return {**recipe, **flags, **merge_calib(recipe, flags)}

    @property
    def calibrated(self) -> bool:
        return self.method != "rtn"

    def _check_scheme_takes_the_settings(self, s: SchemeRules) -> None:
        if self.group_size is not None and s.group_fixed:
            what = {
                "gguf": f"block size {s.group_size} is part of the GGUF format",
                "fp8": "fp8 is one scale per channel",
                "fp8_block": "its 128x128 blocks are part of the scheme",
                "nvfp4": "NVFP4 is one scale per 16 values",
                "mxfp4": "MXFP4 is one scale per 32 values",
            }[s.family]
            raise UsageError(f"--group-size does not apply to {s.name}: its {what}")
        if self.asym and not s.asym_capable:
            hint = (
                "use q4_1 or q5_1 (the asymmetric GGUF types)"
                if s.family == "gguf"
                else "--asym works with " + ", ".join(x.name for x in SCHEME_RULES.values() if x.asym_capable)
            )
            raise UsageError(f"--asym does not apply to {s.name}", hint)
        if self.optimizer == "hqq" and not s.hqq_capable:
            raise UsageError(
                f"--optimizer hqq does not apply to {s.name}",
                "it refines the integer schemes: " + ", ".join(x.name for x in SCHEME_RULES.values() if x.hqq_capable),
            )
        fmt = self.format
        if fmt != "auto" and fmt not in s.formats:
            able = [x.name for x in SCHEME_RULES.values() if fmt in x.formats]
            raise UsageError(
                f"--format {fmt} cannot hold scheme {s.name}",
                f"{s.name} can be written as {' or '.join(s.formats)}; {fmt} holds {', '.join(able)}",
            )

    @property
    def rules(self) -> SchemeRules:
        return SCHEME_RULES[self.scheme]

    @property
    def output_format(self) -> str:
        """The format written: ``format``, or the scheme's own for ``auto``."""
        return self.rules.formats[0] if self.format == "auto" else self.format

    @property
    def symmetric(self) -> bool:
        return self.rules.symmetric and not self.asym
