"""Per-tensor overrides: one rule for every command that takes them (prune, quantize).

A recipe's ``overrides`` is a list of ``{match: REGEX, SETTING: VALUE, ...}``. The rule:

    Every entry whose ``match`` (a Python regex, searched in the tensor name, with a time bound) matches a tensor applies,
    in the order written; a later entry wins for each setting it names. So put the general entries first and
    the exceptions after them (like CSS, or a Makefile's later assignment).

Overrides only change the settings of tensors the command already targets (``include``/``exclude``/``ignore``
choose the targets). Imports no torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelsurgeon.ops.core.errors import UsageError
from modelsurgeon.ops.core.patterns import UserPattern

from .base import check_regex, did_you_mean

RULE = "every matching entry applies in order; a later entry wins for each setting it names"


@dataclass(frozen=True)
class Override:
    """One entry: the regex and the settings it gives the tensors it matches."""

    match: str
    settings: tuple[tuple[str, Any], ...] = field(default=())

    def to_dict(self) -> dict:
        return {"match": self.match, **dict(self.settings)}

    @functools.cached_property
    def pattern(self) -> UserPattern:
        """``match`` compiled once, matched with a time bound (``ops.core.patterns``)."""
        return UserPattern(self.match, "override match", usage=False)


def parse_overrides(entries, allowed: Sequence[str], where: str = "overrides") -> tuple[Override, ...]:
    """``entries`` (a list of mappings, or Overrides) as Overrides; every key is ``match`` or one of ``allowed``."""
    if entries is None:
        return ()
    if not isinstance(entries, (list, tuple)):
        raise UsageError(f"{where} must be a list of {{match: REGEX, ...}}, got {entries!r}")
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, Override):
            out.append(e)
            continue
        if not isinstance(e, Mapping):
            raise UsageError(f"{where}[{i}] must be a mapping {{match: REGEX, ...}}, got {e!r}")
        keys = ["match", *allowed]
        unknown = [k for k in e if k not in keys]
        if unknown == ["pattern"] and "match" not in e:
            raise UsageError(
                f"{where}[{i}] names its tensors with pattern:, which recipe version 1 used",
                "write match: REGEX (the last matching entry wins), or put version: 1 at the top to read the file as before",
            )
        if unknown:
            raise UsageError(
                f"{where}[{i}] has unknown key {unknown[0]!r}{did_you_mean(unknown[0], keys)}", f"known: {', '.join(keys)}"
            )
        if "match" not in e:
            raise UsageError(f"{where}[{i}] has no match: REGEX", "each entry names the tensors it applies to")
        settings = tuple((k, e[k]) for k in allowed if k in e)
        if not settings:
            raise UsageError(f"{where}[{i}] ({e['match']!r}) sets nothing", f"give one of: {', '.join(allowed)}")
        out.append(Override(check_regex(e["match"], f"{where}[{i}] match"), settings))
    return tuple(out)


def settings_for(overrides: Sequence[Override], name: str, resets: Mapping[str, Sequence[str]] | None = None) -> dict:
    """The settings the overrides give tensor ``name``: every match in order, later over earlier. ``resets``:
    an entry that names a key of it drops the earlier values of the settings listed there (a new quantization
    scheme starts from its own group size and symmetry) unless it names them too."""
    out: dict = {}
    for o in overrides:
        if o.pattern.search(name):
            for key, _ in o.settings:
                for dropped in (resets or {}).get(key, ()):
                    out.pop(dropped, None)
            out.update(o.settings)
    return out
