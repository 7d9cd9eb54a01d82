"""Exact selection: which weights go, with exact counts per tensor, per row and over a whole model.

The rule everywhere: a criterion gives every weight an int32 key (``keys.py``; magnitude: the bits of
|w|), and the k smallest keys are zeroed, where k = round(S × n) (half up, ``prune_count``) for the n
values in scope. Ties at the threshold are broken by position: in tensor order (the checkpoint's order),
then by flat index, earlier first. So the count is always exact.

- one tensor (``select_in_tensor``) and the whole model (``radix_select``): a streaming radix selection.
  A histogram pass over the key's high bits narrows the search to one bucket, a second pass over that
  bucket finds the exact key (bf16 and fp16 weights need only the first pass: their low key bits are
  always zero). Only the histograms are kept, so memory does not grow with the number of tensors. The
  result is a ``Selection``: a threshold key and how many of the keys equal to it go; ``TieCutter``
  hands that tie budget to the tensors in order, and ``apply_selection`` zeroes a tensor by it;
- every row (``row_selection``): per-row threshold keys and tie cuts, by ``kthvalue`` on row blocks;
- scores that carry no meaning across tensors (random): ``proportional_counts`` spreads the exact total
  over tensors in proportion to their size.

Weights that are already zero have the smallest key, so they are pruned first: a tensor with fewer
than k zeros ends with exactly k zeros; one with more keeps all its zeros (and nothing else is pruned).

Why not the merge family's top-k (``ops/merge/sparsify.py``, ``TopK``/``select_top``)? That one keeps
the largest float scores of one tensor at a time, brackets its threshold with a sample and also sums
the kept scores for rescaling. Pruning needs a different contract: 31-bit integer keys taken from the
bit patterns of |w| (exact ties, no float rounding, and one pass for 16-bit floats), a streaming radix
select over a whole model that holds only a histogram and never a sample or the values, and ties split
by position across tensors (the global tie budget). The two share the positional tie rule, not code.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.streaming import ordered_map

from .abs_histogram import KeyHistogram, abs_histogram, check_window
from .keys import abs_key, key_value, resolution_shift
from .threshold_mask import threshold_mask, tie_cut

CHUNK = 1 << 22  # values per piece in statistics passes and applies: temporaries stay at a few 10 MB


def prune_count(sparsity: float, n: int) -> int:
    """round(sparsity × n), halves rounded up, within [0, n]."""
    return min(n, max(0, math.floor(sparsity * n + 0.5)))


@dataclass(frozen=True)
class Selection:
    """Prune every key < t, and of the keys == t the first ``budget`` in order (None: all of them)."""

    t: int
    budget: int | None = None

    @property
    def threshold(self) -> float | None:
        return None if self.t < 0 else key_value(self.t)


# called once per statistics pass; yields (values, keys or None) pieces
Pieces = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]]


def select_levels(final_shift: int, triton: bool) -> list[int]:
    """The radix schedule: the shift of each histogram pass, ending at ``final_shift``.

    CPU: one pass when 2^(31 - final_shift) <= 2^18 bins (bf16, fp16), else 2^15 then 2^16 bins.
    Triton: passes of at most 2^11 bins, which a block histogram holds in registers.
    """
    if triton:
        return [s for s in (20, 10) if s > final_shift] + [final_shift]
    if 31 - final_shift <= 18:
        return [final_shift]
    return [s for s in (16,) if s > final_shift] + [final_shift]


def histogram_pass(pieces: Pieces, lo: int, shift: int, nbins: int, use_triton: bool | None, workers: int = 1) -> torch.Tensor:
    """One statistics pass: the key histogram of every piece, counted on ``workers`` threads of the shared
    worker pool (torch releases the GIL). Each thread adds into its own ``KeyHistogram`` (the CPU routes
    count bit patterns and map them onto the window once, at the end); the counts are summed, exactly."""
    check_window(lo, shift, nbins)
    accs: dict[int, KeyHistogram] = {}  # thread id -> that thread's accumulator

    def add(piece: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        me = threading.get_ident()
        acc = accs.get(me)
        if acc is None:
            acc = accs[me] = KeyHistogram(lo, shift, nbins, use_triton)
        acc.add(*piece)

    for _ in ordered_map(add, pieces(), workers=workers):
        pass
    hists = [a.result() for a in accs.values()]
    if not hists:
        return torch.zeros(nbins, dtype=torch.int64)
    for h in hists[1:]:
        hists[0] += h
    return hists[0]


def radix_select(pieces: Pieces, k: int, levels: list[int], use_triton: bool | None = None, workers: int = 1) -> Selection:
    """The exact k-th smallest key over every piece ``pieces()`` yields, one histogram pass per level.

    ``pieces`` is called once per pass and yields (values, keys or None). Only one histogram is held.
    """
    if k <= 0:
        return Selection(-1)
    lo, width, below = 0, 1 << 31, 0  # the answer lies in [lo, lo + width); `below` keys are < lo
    inbin = 0
    for level, shift in enumerate(levels):
        nbins = width >> shift
        hist = histogram_pass(pieces, lo, shift, nbins, use_triton, workers)
        cum = torch.cumsum(hist, 0)
        j = int(torch.searchsorted(cum, torch.tensor([k - below]))[0])
        if j >= nbins:
            raise SurgeonError(
                f"asked to prune {k} values but found only {below + int(cum[-1])}",
                "the checkpoint changed while it was read; run again",
            )
        below += int(cum[j - 1]) if j else 0
        inbin = int(hist[j])
        lo, width = lo + (j << shift), 1 << shift
        if below + inbin == k and level < len(levels) - 1:
            return Selection(lo + width - 1)  # the whole bucket goes: no finer pass needed
    budget = k - below  # the last bucket holds one possible key: lo
    return Selection(lo, None if budget == inbin else budget)


def tensor_pieces(x: torch.Tensor, keys: torch.Tensor | None, chunk: int | None = None) -> Pieces:
    flat, kflat = x.reshape(-1), None if keys is None else keys.reshape(-1)
    chunk = chunk or CHUNK

    def gen():
        for s in range(0, flat.numel(), chunk):
            yield flat[s : s + chunk], None if kflat is None else kflat[s : s + chunk]

    return gen


def select_in_tensor(x: torch.Tensor, k: int, keys: torch.Tensor | None = None, use_triton: bool | None = None) -> Selection:
    """The exact selection of the k smallest keys of one tensor."""
    from modelsurgeon.kernels import should_use_triton

    triton = should_use_triton(x.device, use_triton)
    final = resolution_shift([x.dtype]) if keys is None else 0
    return radix_select(tensor_pieces(x, keys), k, select_levels(final, triton), use_triton)


def apply_selection(
    x: torch.Tensor,
    sel: Selection,
    cut: int,
    keys: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    use_triton: bool | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Zero keys below ``sel.t`` and the keys equal to it before flat index ``cut``; return (out, kept)."""
    chunk = chunk or CHUNK
    flat = x.reshape(-1)
    res = torch.empty_like(flat) if out is None else out.reshape(-1)
    kflat = None if keys is None else keys.reshape(-1)
    kept = 0
    t = torch.tensor([sel.t], dtype=torch.int32, device=x.device)
    for s in range(0, flat.numel(), chunk):
        piece = flat[s : s + chunk]
        tie = torch.tensor([min(max(cut - s, 0), piece.numel())], dtype=torch.int64, device=x.device)
        _, n = threshold_mask(
            piece.view(1, -1),
            t,
            tie,
            keys=None if kflat is None else kflat[s : s + chunk].view(1, -1),
            out=res[s : s + chunk].view(1, -1),
            use_triton=use_triton,
        )
        kept += int(n)
    return res.view(x.shape), kept


def cut_for(x: torch.Tensor, sel: Selection, keys: torch.Tensor | None) -> int:
    """The tie cut that prunes exactly ``sel.budget`` ties inside this one tensor."""
    if sel.budget is None:
        return x.numel()
    if sel.budget == 0:
        return 0
    return tie_cut(x, sel.t, sel.budget, keys)


class TieCutter:
    """Hands out a global selection's tie budget to tensors in order: earlier tensors' ties go first."""

    def __init__(self, sel: Selection, use_triton: bool | None = None):
        self.sel, self.remaining, self.use_triton = sel, sel.budget, use_triton

    def cut(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> int:
        """The tie cut for the next tensor (call once per tensor, in order)."""
        rem = self.remaining
        if rem is None:
            return x.numel()
        if rem == 0:
            return 0
        hist = abs_histogram(x, self.sel.t, 0, 1, keys=keys, use_triton=self.use_triton)
        ties = int(hist[0])
        if ties <= rem:
            self.remaining = rem - ties
            return x.numel()
        self.remaining = 0
        return tie_cut(x, self.sel.t, rem, keys)

    @property
    def done(self) -> bool:
        return self.remaining in (None, 0)


def row_selection(x2d: torch.Tensor, k: int, keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row threshold keys and tie cuts pruning exactly k values of every row."""
    rows, cols = x2d.shape
    dev = x2d.device
    if k <= 0 or cols == 0:
        return torch.full((rows,), -1, dtype=torch.int32, device=dev), torch.zeros(rows, dtype=torch.int64, device=dev)
    t_all, cut_all = [], []
    step = max(1, CHUNK // max(cols, 1))
    for r0 in range(0, rows, step):
        kk = abs_key(x2d[r0 : r0 + step]) if keys is None else keys[r0 : r0 + step]
        t = torch.kthvalue(kk, k, dim=1).values
        tt = t.view(-1, 1)
        eq = kk == tt
        need = k - torch.count_nonzero(kk < tt, dim=1)
        ties = torch.count_nonzero(eq, dim=1)
        cut = torch.full_like(need, cols)
        partial = need < ties
        if bool(partial.any()):
            idx = torch.nonzero(partial).view(-1)
            cum = torch.cumsum(eq[idx].to(torch.int32), dim=1)
            pos = torch.argmax((cum >= need[idx].view(-1, 1)).to(torch.int8), dim=1)
            cut[idx] = pos + 1
        t_all.append(t.to(torch.int32))
        cut_all.append(cut.to(torch.int64))
    return torch.cat(t_all), torch.cat(cut_all)


def proportional_counts(numels: dict[str, int], k: int) -> dict[str, int]:
    """Split k over tensors in proportion to their size (largest remainder; ties by name)."""
    total = sum(numels.values())
    if total == 0:
        return {n: 0 for n in numels}
    quota = {n: k * v / total for n, v in numels.items()}
    counts = {n: min(numels[n], math.floor(q)) for n, q in quota.items()}
    left = k - sum(counts.values())
    for n in sorted(numels, key=lambda n: (-(quota[n] - math.floor(quota[n])), n)):
        if left <= 0:
            break
        if counts[n] < numels[n]:
            counts[n] += 1
            left -= 1
    return counts
