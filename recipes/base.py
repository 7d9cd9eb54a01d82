"""The one base every operation's settings share: a version, a dict/YAML round trip, flags over a recipe.

Each command has one frozen dataclass deriving from ``Config`` (``PruneConfig``, ``QuantizeConfig``,
``MergeConfig``, ``IntrinsicDimConfig``); it holds every default of that command, and ``validate`` checks
every value (names against their registries, ranges, regexes) before any file is opened::

    cfg = PruneConfig.build(recipe="r.yaml", sparsity=0.5)   # recipe values, then the flags given
    cfg.to_dict()                                            # plain data; PruneConfig.from_dict(...) reads it back
    cfg.to_yaml()                                            # the recipe that reproduces the run

A recipe file is YAML read with the safe loader (no tags run code), refusing duplicate keys; an unknown
key is an error naming the closest known one; a newer ``version`` asks for an upgrade, an older one is
migrated by the class's ``migrate`` or refused with what to change. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.patterns import check_pattern


def did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------------------------
# YAML: safe, no duplicate keys, positions in every complaint


def _loader():
    import yaml

    class _NoDuplicates(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(None, None, "keys must be plain names", key_node.start_mark) from None
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    return _NoDuplicates


def yaml_error(e, source: str) -> SurgeonError:
    import yaml

    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = (e.problem or e.context or "invalid YAML").strip()
        return SurgeonError(f"{source} is not valid YAML{where}: {what}", "fix the recipe file")
    return SurgeonError(f"{source} is not valid YAML: {e}", "fix the recipe file")


def read_yaml(path: str | Path) -> Any:
    """The data of a YAML file (safe loader, duplicate keys refused), or one error line."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SurgeonError(f"recipe {p} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SurgeonError(f"cannot read recipe {p}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise yaml_error(e, str(p)) from None


# --------------------------------------------------------------------------------------------
# value checks shared by the configs


def check_fraction(value, where: str, lo_open: bool = False, hi_open: bool = True, example: str = "") -> float:
    """A number in [0, 1) (or the interval the flags say), else a usage error naming ``where``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > 0 if lo_open else value >= 0) and (value < 1 if hi_open else value <= 1)
    if not ok:
        interval = f"{'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"
        raise UsageError(f"{where} must be a number in {interval}, got {value!r}", example or None)
    return float(value)


def check_int(value, where: str, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else (" non-negative" if minimum == 0 else f" >= {minimum}")
        raise UsageError(f"{where} must be a{bound} integer, got {value!r}")
    return value


MAX_SEED = 2**63 - 1  # torch.Generator's range that every command shares


def check_seed(value, where: str = "--seed") -> int:
    """A seed: an integer in [0, 2**63), the same rule for every command (torch and numpy both take it)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UsageError(f"{where} must be an integer from 0 to 2**63-1, got {value!r}")
    return value


def check_regex(pattern, where: str) -> str:
    """A pattern that compiles in the engine every user pattern is matched with (``core.patterns``)."""
    return check_pattern(pattern, where)


def check_choice(value, where: str, allowed) -> str:
    if value not in allowed:
        raise UsageError(f"{where} {value!r} is not one of {', '.join(map(str, allowed))}{did_you_mean(value, allowed)}")
    return value


# --------------------------------------------------------------------------------------------
# the base


@dataclass(frozen=True, kw_only=True)
class Config:
    """Settings of one operation. Subclasses set KIND and VERSION and override ``validate``."""

    KIND: ClassVar[str] = "config"
    VERSION: ClassVar[int] = 1
    EXAMPLE: ClassVar[str] = ""  # a shipped recipe to point users at

    version: int = 0  # 0: the class's VERSION

    def __post_init__(self) -> None:
        if self.version == 0:
            object.__setattr__(self, "version", self.VERSION)
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise UsageError(f"{self.KIND} recipe version {self.version!r} is not a number", f"write version: {self.VERSION}")
        if self.version > self.VERSION:
            raise UsageError(
                f"the {self.KIND} recipe has version {self.version}, newer than this modelsurgeon understands ({self.VERSION})",
                "upgrade: pip install -U modelsurgeon",
            )
        if self.version < self.VERSION:
            raise UsageError(
                f"{self.KIND} recipe version {self.version} is no longer read", f"rewrite it for version {self.VERSION}"
            )
        self.validate()

    def validate(self) -> None:
        """Check every value; raise UsageError (a flag) naming the setting. Normalise with _set."""

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    # --- names
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    # --- reading
    @classmethod
    def migrate(cls, data: dict) -> dict:
        """Turn an older version's settings into this version's (the default knows no older versions)."""
        return data

    @classmethod
    def convert(cls, data: dict, source: str) -> dict:
        """Turn plain values (lists, dicts) into the field types (tuples, nested configs)."""
        return data

    @classmethod
    def check_keys(cls, data: Mapping, source: str) -> None:
        known = cls.field_names()
        unknown = [k for k in data if k not in known]
        if unknown:
            raise SurgeonError(
                f"{source} has unknown keys: {', '.join(map(str, unknown))}{did_you_mean(unknown[0], known)}",
                f"known: {', '.join(known)}",
            )

    @classmethod
    def from_dict(cls, data: Mapping | None, source: str = "the recipe"):
        """A config from plain data (a recipe's mapping, or ``to_dict`` output)."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SurgeonError(f"{source} must be a mapping of settings", f"see {cls.EXAMPLE}" if cls.EXAMPLE else None)
        data = dict(data)
        if isinstance(data.get("version"), int) and not isinstance(data.get("version"), bool) and data["version"] < cls.VERSION:
            data = cls.migrate(data)
        cls.check_keys(data, source)
        return cls(**cls.convert(data, source))

    @classmethod
    def load(cls, path: str | Path) -> dict:
        """A recipe file's settings for this command, converted but not yet validated as a whole.

        A recipe may nest everything under the command's name (``prune: {...}``)."""
        data = read_yaml(path)
        if data is None:
            data = {}
        if isinstance(data, dict) and set(data) == {cls.KIND} and isinstance(data[cls.KIND], dict):
            data = data[cls.KIND]
        if not isinstance(data, dict):
            raise SurgeonError(f"recipe {path} must be a mapping of settings", f"see {cls.EXAMPLE}" if cls.EXAMPLE else None)
        cls.check_keys(data, f"recipe {path}")
        if isinstance(data.get("version"), int) and data["version"] < cls.VERSION:
            data = cls.migrate(dict(data))
        return cls.convert(dict(data), f"recipe {path}")

    @classmethod
    def flags_over(cls, recipe: dict, flags: dict) -> dict:
        """How given flags combine with recipe values; by default a flag replaces the recipe's value."""
        return {**recipe, **flags}

    @classmethod
    def build(cls, recipe: str | Path | None = None, **flags):
        """Recipe values, then every flag that was given (not None) on top; the class supplies the rest."""
        base = cls.load(recipe) if recipe else {}
        given = {k: v for k, v in flags.items() if v is not None}
        unknown = set(given) - set(cls.field_names())
        if unknown:
            raise TypeError(f"unknown {cls.KIND} config fields {sorted(unknown)}")
        return cls(**cls.flags_over(base, given))

    # --- writing
    def to_dict(self) -> dict:
        """Plain data (dicts, lists, scalars): what ``from_dict`` reads back, and what provenance records.
        ``None`` values and empty collections are left out; the version always comes first."""
        out: dict = {"version": self.version}
        for f in fields(self):
            if f.name == "version":
                continue
            v = _plain(getattr(self, f.name))
            if v is None or v == [] or v == {}:
                continue
            out[f.name] = v
        return out

    def to_yaml(self, header: str | None = None) -> str:
        import yaml

        head = header if header is not None else f"# modelsurgeon {self.KIND} recipe\n"
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _plain(v):
    if hasattr(v, "to_dict") and not isinstance(v, type):  # a Config, an override entry
        return v.to_dict()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, frozenset):
        return sorted(v)
    return v
