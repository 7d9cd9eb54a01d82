"""The prune configuration: the one place its defaults live, built from flags or a YAML recipe.

A recipe holds any of the fields below; flags given on the command line override it. Per-tensor
sparsities come from ``overrides``: the first entry whose regex matches a tensor's name (``re.search``)
sets that tensor's sparsity; 0 leaves it dense. Example (``recipes/prune_example.yaml``)::

    version: 1
    method: magnitude
    scope: layer
    sparsity: 0.5
    overrides:
      - {pattern: 'attention\\.self\\.(query|key)\\.', sparsity: 0.3}
      - {pattern: 'layer\\.0\\.', sparsity: 0.0}

This module imports no torch, so flags are checked before anything heavy loads.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from modelsurgeon.ops.core.errors import SurgeonError, UsageError

RECIPE_VERSION = 1
SCOPES = ("layer", "row", "global")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def check_sparsity(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value < 1:
        raise UsageError(f"{where} must be a number in [0, 1), got {value!r}", "0.5 prunes half of each targeted tensor")
    return float(value)


def parse_nm(text: str, where: str = "--pattern") -> tuple[int, int]:
    m = _NM.match(str(text))
    if not m:
        raise UsageError(f"{where} {text!r} is not of the form N:M", "e.g. 2:4 keeps the 2 largest of every 4")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise UsageError(f"{where} {text!r} needs 0 < N < M", "N is how many of every M weights are kept, e.g. 2:4")
    return n, mm


def _check_regex(pattern, where: str) -> str:
    if not isinstance(pattern, str):
        raise UsageError(f"{where} must be a regular expression string, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise UsageError(f"{where} {pattern!r} is not a valid regular expression: {e}") from None
    return pattern


@dataclass(frozen=True)
class SparsityOverride:
    pattern: str
    sparsity: float

    def __post_init__(self):
        _check_regex(self.pattern, "override pattern")
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, f"override {self.pattern!r} sparsity"))


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides what `surgeon prune` does to a checkpoint."""

    sparsity: float | None = None  # fraction of each targeted tensor to zero; implied by pattern
    method: str = "magnitude"  # a criterion from ops/prune.py CRITERIA
    scope: str = "layer"  # layer | row | global (where the count is exact)
    pattern: str | None = None  # "N:M": keep N of every M along the input dimension
    include: str | None = None  # regex: targets instead of the default linear weights
    exclude: str | None = None  # regex: removed from the targets
    overrides: tuple[SparsityOverride, ...] = field(default_factory=tuple)
    seed: int = 0  # for --method random
    version: int = RECIPE_VERSION

    def __post_init__(self):
        if self.version != RECIPE_VERSION:
            if isinstance(self.version, int) and self.version > RECIPE_VERSION:
                raise UsageError(
                    f"the recipe has version {self.version}, newer than this modelsurgeon understands ({RECIPE_VERSION})",
                    "upgrade: pip install -U modelsurgeon",
                )
            raise UsageError(f"recipe version {self.version!r} is not supported", f"write version: {RECIPE_VERSION}")
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, "--sparsity"))
        if not isinstance(self.method, str) or not self.method:
            raise UsageError(f"--method must be a name, got {self.method!r}")
        if self.scope not in SCOPES:
            raise UsageError(f"--scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed!r}")
        for where, rx in (("--include", self.include), ("--exclude", self.exclude)):
            if rx is not None:
                _check_regex(rx, where)
        if self.pattern is not None:
            n, m = parse_nm(self.pattern)
            object.__setattr__(self, "pattern", f"{n}:{m}")
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
        object.__setattr__(self, "overrides", tuple(self.overrides))

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

    def to_recipe(self) -> dict:
        d = {"version": self.version}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "version" or v is None or (f.name == "overrides" and not v):
                continue
            d[f.name] = [asdict(o) for o in v] if f.name == "overrides" else v
        return d

    def to_yaml(self) -> str:
        import yaml

        head = "# modelsurgeon prune recipe: surgeon prune MODEL -o OUT --recipe THIS_FILE\n"
        return head + yaml.safe_dump(self.to_recipe(), sort_keys=False)


FIELDS = {f.name for f in fields(PruneConfig)}


def load_recipe(path: str | Path) -> dict:
    """Read a YAML recipe into config fields (not yet validated as a whole)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SurgeonError(f"cannot read recipe {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise SurgeonError(f"recipe {p} is not valid YAML{at}", "check its indentation and quoting") from None
    if data is None:
        data = {}
    if isinstance(data, dict) and set(data) == {"prune"} and isinstance(data["prune"], dict):
        data = data["prune"]  # a recipe may also nest everything under `prune:`
    if not isinstance(data, dict):
        raise SurgeonError(f"recipe {p} must be a mapping of settings", "see recipes/prune_example.yaml")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise SurgeonError(f"recipe {p} has unknown keys: {', '.join(map(str, unknown))}", f"known: {', '.join(sorted(FIELDS))}")
    over = data.get("overrides") or []
    if not isinstance(over, list) or not all(isinstance(o, dict) and set(o) == {"pattern", "sparsity"} for o in over):
        raise SurgeonError(f"recipe {p}: overrides must be a list of {{pattern: REGEX, sparsity: S}}")
    data = dict(data)
    data["overrides"] = tuple(SparsityOverride(o["pattern"], o["sparsity"]) for o in over)
    return data


def build_config(recipe: str | Path | None = None, **flags) -> PruneConfig:
    """Recipe values, then every flag that was given (not None) on top; the dataclass supplies the rest."""
    base = load_recipe(recipe) if recipe else {}
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = set(given) - FIELDS
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}")
    merged = {**base, **given}
    if "pattern" in given and "sparsity" not in given:
        merged.pop("sparsity", None)  # a pattern on the command line replaces the recipe's sparsity
    if "sparsity" in given and "pattern" not in given:
        merged.pop("pattern", None)
    return PruneConfig(**merged)
