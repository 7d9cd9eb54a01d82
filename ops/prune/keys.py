"""Ranking keys: the one order every pruning decision uses.

A key is an int32 in [0, 2^31): larger means more important. For a weight, the key is the IEEE-754
float32 bit pattern of |w| with the sign bit cleared; for non-negative floats that bit pattern is
monotone in the value, so comparing keys is comparing magnitudes, with every tie exact and no float
rounding in the comparison. fp16 and bf16 widen to float32 exactly; float64 is ranked by its float32
rounding. Keys of ±0 are 0 (the smallest); every NaN has the one key just above inf, so it is
pruned last.

A key from a score (random, or a calibrated score such as Wanda's |W|·‖X‖) is the same bit pattern
of the non-negative float32 score, or any int32 in [0, 2^31) the criterion draws directly.
"""

from __future__ import annotations

import hashlib

import torch

KEY_BITS = 31  # keys live in [0, 2^31)
_SIGN_OFF = 0x7FFFFFFF
NAN_KEY = 0x7F800001  # every NaN gets this one key, just above inf (converters disagree on NaN payloads)
# Low bits of the float32 pattern that are always zero for a narrower float (mantissa 23 - m bits).
_ZERO_LOW_BITS = {torch.bfloat16: 16, torch.float16: 13}


def abs_key(x: torch.Tensor) -> torch.Tensor:
    """int32 keys of |x| (same shape)."""
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return (x.view(torch.int32) & _SIGN_OFF).clamp_max_(NAN_KEY)


def score_key(score: torch.Tensor) -> torch.Tensor:
    """int32 keys of a non-negative float score (same order as the score)."""
    return abs_key(score)


def key_value(key: int) -> float:
    """The |w| a key stands for."""
    if key < 0:
        return float("-inf")
    return torch.tensor([key], dtype=torch.int32).view(torch.float32).item()


def resolution_shift(dtypes) -> int:
    """How many low key bits are zero for every weight of these dtypes (0 when any is float32/64).

    A histogram whose bins are 2^shift keys wide then has exactly one possible key per bin, so a
    selection over bf16 weights is exact after a single histogram pass.
    """
    shifts = [_ZERO_LOW_BITS.get(d, 0) for d in dtypes]
    return min(shifts) if shifts else 0


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed from the user's seed and the tensor's name: independent of order and device."""
    digest = hashlib.sha256(f"modelsurgeon-prune:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_keys(shape, seed: int, name: str) -> torch.Tensor:
    """Uniform random keys in [0, 2^31 - 1), drawn on the CPU from the tensor's own generator."""
    g = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))
    return torch.randint(0, (1 << KEY_BITS) - 1, tuple(shape), generator=g, dtype=torch.int32)
