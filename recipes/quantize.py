"""`surgeon quantize` settings: the one place that holds their defaults.

The CLI builds a ``QuantizeConfig`` from its flags; ``ops/`` takes it. Scheme-specific defaults (bits,
group size, symmetry) live with each scheme in ``ops/quant.py``'s registry; a ``None`` here means
"the scheme's own default".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from modelsurgeon.ops.core.errors import UsageError

CONFIG_VERSION = 1
OPTIMIZERS = ("rtn", "hqq")
FORMATS = ("auto", "compressed-tensors", "gguf", "dense")


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


@dataclass(frozen=True)
class QuantizeConfig:
    scheme: str
    format: str = "auto"  # auto: the scheme's natural format
    group_size: int | None = None  # None: the scheme's default; -1: one group per row (per channel)
    asym: bool = False
    optimizer: str = "rtn"
    hqq: HQQConfig = field(default_factory=HQQConfig)
    include: str | None = None  # replaces the default rule (2-D linear weights) with a regex
    ignore: str | None = None  # removes matches from the selection
    device: str = "auto"
    use_triton: bool | None = None  # None: Triton on CUDA, the torch reference elsewhere
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise UsageError(
                f"quantize config version {self.version} is not supported (this modelsurgeon reads {CONFIG_VERSION})",
                "upgrade modelsurgeon or rewrite the recipe",
            )
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r} is unknown", f"use one of: {', '.join(FORMATS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer!r} is unknown", f"use one of: {', '.join(OPTIMIZERS)}")
        if self.group_size is not None and (self.group_size == 0 or self.group_size < -1):
            raise UsageError(f"--group-size {self.group_size} is invalid", "give a positive size, or -1 for one group per row")

    def to_dict(self) -> dict:
        return asdict(self)
