"""`surgeon prune` settings: the one place their defaults live, built from flags or a YAML recipe.

A recipe holds any of the fields below; flags given on the command line override it (a ``pattern`` given
as a flag drops the recipe's ``sparsity``, and the other way round). Per-tensor sparsities come from
``overrides`` under the one rule of ``recipes/overrides.py``: every entry whose ``match`` regex finds the
tensor's name applies in order, so the last matching entry sets its sparsity; 0 leaves it dense. Example
(``recipes/prune_example.yaml``)::

    version: 2
    method: magnitude
    scope: layer
    sparsity: 0.5
    overrides:
      - {match: 'attention\\.self\\.(query|key)\\.', sparsity: 0.3}
      - {match: 'layer\\.0\\.', sparsity: 0.0}      # last: wins over the line above in block 0

Version 1 recipes (``pattern:`` instead of ``match:``, the first match winning) are read as version 2 with
their overrides reversed, which keeps their meaning.

This module imports no torch, so every flag (the --method name included) is checked before anything
heavy loads or any checkpoint is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.registry import Registry

from .base import Config, check_choice, check_fraction, check_regex, check_seed
from .overrides import Override, parse_overrides, settings_for

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


def SparsityOverride(match: str, sparsity: float) -> Override:  # noqa: N802 - reads like the entry it builds
    """One override entry: tensors matching ``match`` are pruned at ``sparsity``."""
    return parse_overrides([{"match": match, "sparsity": sparsity}], OVERRIDE_SETTINGS)[0]


OVERRIDE_SETTINGS = ("sparsity",)


@dataclass(frozen=True)
class PruneConfig(Config):
    """Everything that decides what `surgeon prune` does to a checkpoint."""

    KIND = "prune"
    VERSION = 2  # 2: overrides are {match, sparsity}, the last match wins (1: {pattern, sparsity}, the first)
    EXAMPLE = "recipes/prune_example.yaml"

    sparsity: float | None = None  # fraction of each targeted tensor to zero; implied by pattern
    method: str = "magnitude"  # a criterion of ops/prune/criteria.py (its name listed in METHODS)
    scope: str = "layer"  # layer | row | global (where the count is exact)
    pattern: str | None = None  # "N:M": keep N of every M along the input dimension
    include: str | None = None  # regex: targets instead of the default linear weights
    exclude: str | None = None  # regex: removed from the targets
    overrides: tuple[Override, ...] = ()  # [{match: REGEX, sparsity: S}], recipes/overrides.py's rule
    seed: int = 0  # for --method random

    def validate(self) -> None:
        if self.sparsity is not None:
            self._set("sparsity", check_sparsity(self.sparsity, "--sparsity"))
        if not isinstance(self.method, str) or not self.method:
            raise UsageError(f"--method must be a name, got {self.method!r}")
        METHODS.lookup(self.method)
        check_choice(self.scope, "--scope", SCOPES)
        check_seed(self.seed, "--seed")
        for where, rx in (("--include", self.include), ("--exclude", self.exclude)):
            if rx is not None:
                check_regex(rx, where)
        over = parse_overrides(self.overrides, OVERRIDE_SETTINGS)
        for o in over:
            check_sparsity(dict(o.settings)["sparsity"], f"override {o.match!r} sparsity")
        self._set(
            "overrides",
            tuple(Override(o.match, (("sparsity", float(dict(o.settings)["sparsity"])),)) for o in over),
        )
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
    def migrate(cls, data: dict) -> dict:
        """Version 1: overrides were {pattern, sparsity} and the first match won; reversed, the last match
        wins with the same result, so a version 1 recipe keeps its meaning."""
        if data.get("version") == 1:
            over = data.get("overrides") or []
            if not isinstance(over, list) or not all(isinstance(o, dict) and set(o) == {"pattern", "sparsity"} for o in over):
                raise SurgeonError("a version 1 recipe's overrides must be a list of {pattern: REGEX, sparsity: S}")
            data = {
                **data,
                "version": 2,
                "overrides": [{"match": o["pattern"], "sparsity": o["sparsity"]} for o in reversed(over)],
            }
        return data

    @classmethod
    def convert(cls, data: dict, source: str) -> dict:
        try:
            data["overrides"] = parse_overrides(data.get("overrides") or [], OVERRIDE_SETTINGS)
        except UsageError as e:
            raise SurgeonError(f"{source}: {e.message}", e.hint) from None
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
        """The tensor's sparsity: its overrides (the last match wins), else the target."""
        return settings_for(self.overrides, name).get("sparsity", self.target_sparsity)

    # --- writing
    def to_yaml(self, header: str | None = None) -> str:
        head = "# modelsurgeon prune recipe: surgeon prune MODEL -o OUT --recipe THIS_FILE\n"
        return super().to_yaml(head if header is None else header)
