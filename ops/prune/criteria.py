"""Pruning criteria: what decides which weights go first (``--method``).

A criterion gives every weight an int32 key (``keys.py``; magnitude: the bits of |w|); the selection
(``select.py``) zeroes the k smallest. Criteria live in a registry (``register_criterion``); Wanda and
SparseGPT add entries later. Their names are also listed, torch-free, in ``recipes.prune.METHODS`` so
that the config rejects a misspelt ``--method`` before a checkpoint is opened; this module checks at
import that both lists agree, and ``register_criterion`` adds a new name there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.recipes.prune import METHODS

from .keys import random_keys


@dataclass(frozen=True)
class Criterion:
    name: str
    summary: str
    url: str | None
    # (weight on CPU, tensor name, seed) -> int32 keys of the weight's shape, or None for |w| itself
    # (the mask ops then compute the key inside the kernel: no extra tensor)
    keys: Callable[[torch.Tensor, str, int], torch.Tensor | None]
    # how --scope global works: "radix" (one threshold over all keys) or "proportional" (the exact total
    # spread over tensors in proportion to their size: for scores that carry no meaning across tensors)
    global_mode: str = "radix"
    # True when keys() returns None: the key is |w|'s bits, computed inside the mask ops, and the
    # global statistics pass can stream a tensor in pieces
    fused: bool = False


CRITERIA: Registry[Criterion] = Registry("pruning method")
_BUILT_IN = tuple(METHODS)  # the names the config knows without importing this module


def register_criterion(name: str, summary: str, url: str | None = None, global_mode: str = "radix", fused: bool = False):
    """Decorator: register ``fn(weight, name, seed) -> keys`` (None when ``fused``) as a pruning criterion."""

    def deco(fn):
        if global_mode not in ("radix", "proportional"):
            raise ValueError(f"global_mode must be radix or proportional, got {global_mode!r}")
        CRITERIA.add(name, Criterion(name, summary, url, fn, global_mode, fused))
        if name not in METHODS:
            METHODS.add(name, name)  # so a config naming it validates
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    return CRITERIA.lookup(name)


@register_criterion("magnitude", "zero the smallest |w|", "https://arxiv.org/abs/1506.02626", fused=True)
def _magnitude(weight: torch.Tensor, name: str, seed: int) -> None:
    return None


@register_criterion(
    "random",
    "zero uniformly random weights (seeded per tensor from --seed and its name)",
    global_mode="proportional",
)
def _random(weight: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    return random_keys(weight.shape, seed, name)


if tuple(CRITERIA) != _BUILT_IN:
    raise ImportError(
        f"recipes.prune.METHODS ({', '.join(_BUILT_IN)}) and the criteria registered here ({', '.join(CRITERIA)}) "
        "must list the same names: add a built-in criterion's name to both"
    )
