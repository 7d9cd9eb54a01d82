"""Per-tensor statistics for `report`, computed over flat chunks so memory stays bounded.

Every function here takes an iterator of 1-D chunks of one tensor (``Checkpoint.iter_chunks``)
and folds them into a small accumulator; nothing ever holds a full float32 copy of a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from modelsurgeon.ops.core.sparsity import group_nonzeros

_FP8 = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu") if hasattr(torch, n)}
_UNSIGNED = {getattr(torch, n): getattr(torch, s) for n, s in (("uint16", "int16"), ("uint32", "int32"), ("uint64", "int64"))}


def _countable(c: torch.Tensor) -> torch.Tensor:
    """A view count_nonzero takes (it has no kernel for uint16/32/64): the same bits as signed."""
    return c.view(_UNSIGNED[c.dtype]) if c.dtype in _UNSIGNED else c


def _integer_range(c: torch.Tensor) -> tuple[float, float]:
    """(min, max) of an integer or bool chunk, unsigned 16/32/64-bit included (their values as Python ints)."""
    if c.dtype == torch.bool or c.dtype in (torch.uint16, torch.uint32):
        c = c.to(torch.int64)
    elif c.dtype == torch.uint64:  # values >= 2**63 read as negative int64: split at the sign bit
        s = c.view(torch.int64)
        neg = s < 0
        lo = int(s[~neg].min()) if bool((~neg).any()) else int(s[neg].min()) + 2**64
        hi = int(s[neg].max()) + 2**64 if bool(neg.any()) else int(s.max())
        return float(lo), float(hi)
    lo, hi = torch.aminmax(c)
    return float(lo), float(hi)


@dataclass
class TensorStats:
    numel: int = 0
    nonzero: int = 0
    nm24: bool | None = None  # None: not applicable (non-float, or rows not a multiple of 4)
    abs_sum: float = 0.0
    total: float = 0.0
    sq_sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    is_float: bool = True

    @classmethod
    def start(cls, is_float: bool, row_len: int) -> TensorStats:
        check24 = is_float and row_len > 0 and row_len % 4 == 0
        return cls(is_float=is_float, nm24=True if check24 else None)

    def update(self, c: torch.Tensor) -> None:
        """Fold one flat chunk in (float32 reductions per chunk; torch sums pairwise). Every safetensors
        dtype works: fp8 is widened to float32, unsigned integers are read exactly (``_integer_range``)."""
        self.numel += c.numel()
        if c.numel() == 0:
            return
        if c.dtype in _FP8:
            c = c.float()
        if self.nm24:
            per_group = group_nonzeros(c, 4)
            self.nonzero += int(per_group.sum())
            self.nm24 = bool((per_group <= 2).all())
        else:
            self.nonzero += int(torch.count_nonzero(_countable(c)))
        if not self.is_float:
            lo, hi = _integer_range(c)
            self.min, self.max = min(self.min, lo), max(self.max, hi)
            return
        x = c if c.dtype in (torch.float32, torch.float64) else c.float()
        self.abs_sum += float(x.abs().sum())
        self.total += float(x.sum())
        self.sq_sum += float(torch.dot(x, x))
        lo, hi = torch.aminmax(x)
        self.min, self.max = min(self.min, float(lo)), max(self.max, float(hi))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.numel if self.numel else 0.0

    @property
    def mean_abs(self) -> float | None:
        return self.abs_sum / self.numel if self.numel and self.is_float else None

    @property
    def std(self) -> float | None:
        if not self.numel or not self.is_float:
            return None
        mean = self.total / self.numel
        return math.sqrt(max(self.sq_sum / self.numel - mean * mean, 0.0))

    def as_dict(self) -> dict:
        return {
            "numel": self.numel,
            "nonzero": self.nonzero,
            "sparsity": self.sparsity,
            "nm_2_4": self.nm24,
            "mean_abs": self.mean_abs,
            "std": self.std,
            "min": _finite(self.min) if self.numel else None,
            "max": _finite(self.max) if self.numel else None,
        }


def _finite(v: float) -> float | str:
    # JSON has no inf/nan; keep them readable instead of producing invalid JSON
    return v if math.isfinite(v) else str(v)


def tensor_stats(chunks: Iterable[torch.Tensor], is_float: bool, row_len: int) -> TensorStats:
    """Fold chunks of one tensor (each a multiple of 4 long when ``row_len % 4 == 0``) into TensorStats."""
    st = TensorStats.start(is_float, row_len)
    for c in chunks:
        st.update(c)
    return st


@dataclass
class CompareStats:
    numel: int = 0
    diff_sq: float = 0.0
    a_sq: float = 0.0
    b_sq: float = 0.0
    dot: float = 0.0
    changed: int = 0
    sign_same: int = 0

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Fold one pair of matching flat chunks in. A NaN on either side makes the distances NaN (so a
        gate on them fails), as it should: nothing can be said about how far apart they are."""
        self.numel += a.numel()
        if a.numel() == 0:
            return
        if a.dtype in _FP8 or a.dtype in _UNSIGNED:
            a = a.float() if a.dtype in _FP8 else a.to(torch.float64)
        if b.dtype in _FP8 or b.dtype in _UNSIGNED:
            b = b.float() if b.dtype in _FP8 else b.to(torch.float64)
        if a.dtype == torch.bool or b.dtype == torch.bool:
            a, b = a.to(torch.int8), b.to(torch.int8)
        self.changed += int((a != b).sum())
        self.sign_same += int((torch.sign(a) == torch.sign(b)).sum())
        x, y = a.double(), b.double()  # exact enough for cosine of a tensor with itself to be 1
        self.a_sq += float(torch.dot(x, x))
        self.b_sq += float(torch.dot(y, y))
        self.dot += float(torch.dot(x, y))
        self.diff_sq += float(torch.dot(x - y, x - y))

    def as_dict(self) -> dict:
        n = max(self.numel, 1)
        if any(math.isnan(v) for v in (self.a_sq, self.b_sq, self.dot, self.diff_sq)):
            return {
                "rel_l2": "nan",
                "cosine": "nan",
                "changed_fraction": self.changed / n,
                "sign_agreement": self.sign_same / n,
            }
        a, b = math.sqrt(self.a_sq), math.sqrt(self.b_sq)
        diff = math.sqrt(self.diff_sq)
        if a > 0:
            rel = diff / a
        else:
            rel = 0.0 if diff == 0 else "inf"
        if self.changed == 0:
            cos = 1.0
        elif a > 0 and b > 0:
            cos = max(-1.0, min(1.0, self.dot / (a * b)))
        else:
            cos = 1.0 if a == b else 0.0
        return {
            "rel_l2": rel,
            "cosine": cos,
            "changed_fraction": self.changed / n,
            "sign_agreement": self.sign_same / n,
        }


def compare_stats(chunks_a: Iterable[torch.Tensor], chunks_b: Iterable[torch.Tensor]) -> CompareStats:
    """Relative L2 distance ||a-b||/||a||, cosine, fraction changed and sign agreement of two tensors."""
    st = CompareStats()
    for a, b in zip(chunks_a, chunks_b):
        st.update(a, b)
    return st
