"""What every command returns: a result that serialises itself to the JSON the CLI prints.

A result is a dataclass deriving from ``Result``; ``to_dict()`` turns its fields into plain data (nested
dataclasses, lists and mappings included). A result whose JSON is not simply its fields overrides
``to_dict``. The CLI prints ``to_dict()`` with ``--json`` and renders a table from the same dict
otherwise, so a Python caller gets exactly the numbers the CLI prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


def plain(v):
    """Plain data: dataclasses (and objects with to_dict) to dicts, tuples to lists, recursively."""
    if hasattr(v, "to_dict") and not isinstance(v, type):
        return v.to_dict()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    return v


class Result:
    """Base of every command's result (a dataclass); ``ok`` is False when a gate failed."""

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self) -> dict:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
