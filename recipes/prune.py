"""`surgeon prune` settings: the one place their defaults live, built from flags or a YAML recipe.

A recipe holds any of the fields below; flags given on the command line override it (a ``pattern`` given
as a flag drops the recipe's ``sparsity``, and the other way round). Per-tensor sparsities come from
``overrides``: the first entry whose regex matches a tensor's name (``re.search``) sets that tensor's
sparsity; 0 leaves it dense. Example (``recipes/prune_example.yaml``)::

    version: 1
    method: magnitude
    scope: layer
    sparsity: 0.5
    overrides:
      - {pattern: 'attention\\.self\\.(query|key)\\.', sparsity: 0.3}
      - {pattern: 'layer\\.0\\.', sparsity: 0.0}

This module imports no torch, so every flag (the --method name included) is checked before anything
heavy loads or any checkpoint is opened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.registry import Registry

from .base import Config, check_choice, check_fraction, check_int, check_regex

SCOPES = ("layer", "row", "global")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")

# The names --method accepts, known here without torch so that a misspelt name fails before a checkpoint
# is opened (or downloaded). ops/prune/criteria.py registers one criterion under each of these names and
# refuses at import to disagree with this list; register_criterion adds a later criterion's name here too.
METHODS: Registry[str] = Registry("pruning method")
for _name in ("magnitude", "random"):
    METHODS.add(_name, _name)


def check_sparsity(value, where: str) -> float:
    return check_fraction(value, where, example="0.5 prunes half of each targeted tensor")


def parse_nm(text: str, where: str = "--pattern") -> tuple[int, int]:
    m = _NM.match(str(text))
    if not m:
        raise UsageError(f"{where} {text!r} is not of the form N:M", "e.g. 2:4 keeps the 2 largest of every 4")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise UsageError(f"{where} {text!r} needs 0 < N < M", "N is how many of every M weights are kept, e.g. 2:4")
    return n, mm


@dataclass(frozen=True)
class SparsityOverride:
    pattern: str
    sparsity: float

    def __post_init__(self):
        check_regex(self.pattern, "override pattern")
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, f"override {self.pattern!r} sparsity"))


def _is_override(o) -> bool:
    return isinstance(o, SparsityOverride) or (isinstance(o, Mapping) and set(o) == {"pattern", "sparsity"})


@dataclass(frozen=True)
class PruneConfig(Config):
    """Everything that decides what `surgeon prune` does to a checkpoint."""

    KIND = "prune"
    VERSION = 1
    EXAMPLE = "recipes/prune_example.yaml"

    sparsity: float | None = None  # fraction of each targeted tensor to zero; implied by pattern
    method: str = "magnitude"  # a criterion of ops/prune/criteria.py (its name listed in METHODS)
    scope: str = "layer"  # layer | row | global (where the count is exact)
    pattern: str | None = None  # "N:M": keep N of every M along the input dimension
    include: str | None = None  # regex: targets instead of the default linear weights
    exclude: str | None = None  # regex: removed from the targets
    overrides: tuple[SparsityOverride, ...] = ()
    seed: int = 0  # for --method random

    def validate(self) -> None:
        if self.sparsity is not None:
            self._set("sparsity", check_sparsity(self.sparsity, "--sparsity"))
        if not isinstance(self.method, str) or not self.method:
            raise UsageError(f"--method must be a name, got {self.method!r}")
        METHODS.lookup(self.method)
        check_choice(self.scope, "--scope", SCOPES)
        check_int(self.seed, "--seed")
        for where, rx in (("--include", self.include), ("--exclude", self.exclude)):
            if rx is not None:
                check_regex(rx, where)
        over = self.overrides
        if not isinstance(over, (list, tuple)) or not all(_is_override(o) for o in over):
            raise UsageError(f"overrides must be a list of {{pattern: REGEX, sparsity: S}}, got {over!r}")
        self._set("overrides", tuple(o if isinstance(o, SparsityOverride) else SparsityOverride(**o) for o in over))
        if self.pattern is not None:
            n, m = parse_nm(self.pattern)
            self._set("pattern", f"{n}:{m}")
            if self.scope != "layer":
                raise UsageError(
                    f"--scope {self.scope} and --pattern {self.pattern} are mutually exclusive",
                    "an N:M pattern chooses within each group of M; drop --scope",
                )
            implied = 1 - n / m
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
                raise UsageError(
                    f"--sparsity {self.sparsity:g} contradicts --pattern {self.pattern} (which prunes {implied:g})",
                    "give one of them",
                )
            if self.overrides:
                raise UsageError(
                    f"--pattern {self.pattern} fixes every tensor's sparsity, so a recipe cannot override it",
                    "use --exclude (or a recipe's exclude) to leave tensors dense",
                )
        elif self.sparsity is None:
            raise UsageError("no sparsity given", "pass --sparsity S (e.g. 0.5), --pattern N:M, or a --recipe that sets one")

    # --- reading
    @classmethod
    def convert(cls, data: dict, source: str) -> dict:
        over = data.get("overrides") or []
        if not isinstance(over, list) or not all(isinstance(o, dict) and set(o) == {"pattern", "sparsity"} for o in over):
            raise SurgeonError(f"{source}: overrides must be a list of {{pattern: REGEX, sparsity: S}}")
        data["overrides"] = tuple(SparsityOverride(o["pattern"], o["sparsity"]) for o in over)
        return data

    @classmethod
    def flags_over(cls, recipe: dict, flags: dict) -> dict:
        """A flag replaces the recipe's value; a pattern flag also drops the recipe's sparsity, and a
        sparsity flag the recipe's pattern (unless both are given, which validate then checks)."""
        merged = {**recipe, **flags}
        if "pattern" in flags and "sparsity" not in flags:
            merged.pop("sparsity", None)
        if "sparsity" in flags and "pattern" not in flags:
            merged.pop("pattern", None)
        return merged

    # --- derived
    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern) if self.pattern else None

    @property
    def target_sparsity(self) -> float:
        if self.pattern:
            n, m = self.nm
            return 1 - n / m
        return float(self.sparsity)

    def sparsity_for(self, name: str) -> float:
        for o in self.overrides:
            if re.search(o.pattern, name):
                return o.sparsity
        return self.target_sparsity

    # --- writing
    def to_yaml(self, header: str | None = None) -> str:
        head = "# modelsurgeon prune recipe: surgeon prune MODEL -o OUT --recipe THIS_FILE\n"
        return super().to_yaml(head if header is None else header)
