"""Pruning a checkpoint: criteria, exact counts per tensor / row / model, N:M, streamed tensor by tensor.

The rule everywhere: a criterion gives every weight an int32 key (``ops/keys.py``; magnitude: the
bits of |w|), and the k smallest keys are zeroed, where k = round(S × n) (half up) for the n values
in scope. Ties at the threshold are broken by position: in tensor order (the checkpoint's order),
then by flat index, earlier first. So the count is always exact.

- layer: every targeted tensor loses exactly round(S × numel) values;
- row: every row (last dimension) loses exactly round(S × row length);
- global: one threshold over all targeted tensors, exactly round(S × total) values. Found by a
  streaming radix selection (``radix_select``): a histogram pass over the key's high bits narrows
  the search to one bucket, a second pass over that bucket finds the exact key (bf16 and fp16 weights
  need only the first pass: their low key bits are always zero). Only the histograms are kept, so
  memory does not grow with the number of tensors; a third pass applies the threshold while writing;
- N:M: the N largest keys of every M consecutive values along the last dimension are kept.

Weights that are already zero have the smallest key, so they are pruned first: a tensor with fewer
than k zeros ends with exactly k zeros; one with more keeps all its zeros (and nothing else is pruned).

Criteria live in a registry (``register_criterion``); Wanda and SparseGPT add entries later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.ops.core.streaming import prefetched
from modelsurgeon.ops.io.checkpoint import Checkpoint
from modelsurgeon.ops.io.targets import select_targets

from .abs_histogram import KeyHistogram, abs_histogram
from .keys import abs_key, key_value, random_keys, resolution_shift
from .nm_mask import nm_mask
from .threshold_mask import threshold_mask, tie_cut

CHUNK = 1 << 22  # values per piece in statistics passes and applies: temporaries stay at a few 10 MB
STATS_WORKERS = 2  # threads that histogram pieces in a statistics pass (bincount runs on one core)
APPLY_WORKERS = 2  # tensors pruned at once on the CPU


# --------------------------------------------------------------------------------------------
# criteria


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


def register_criterion(name: str, summary: str, url: str | None = None, global_mode: str = "radix", fused: bool = False):
    """Decorator: register ``fn(weight, name, seed) -> keys`` (None when ``fused``) as a pruning criterion."""

    def deco(fn):
        if global_mode not in ("radix", "proportional"):
            raise ValueError(f"global_mode must be radix or proportional, got {global_mode!r}")
        CRITERIA.add(name, Criterion(name, summary, url, fn, global_mode, fused))
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


# --------------------------------------------------------------------------------------------
# counts and the exact selection


def count_nonzero(x: torch.Tensor) -> int:
    """Nonzero values (±0 are zero); 16-bit floats counted on their bits, 2.5x faster on the CPU."""
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu" and x.is_contiguous():
        return int(torch.count_nonzero(x.view(torch.int16) & 0x7FFF))
    return int(torch.count_nonzero(x))


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
    """One statistics pass: the key histogram of every piece, on ``workers`` threads (torch releases the GIL)."""
    if workers <= 1:
        acc = KeyHistogram(lo, shift, nbins, use_triton)
        for x, keys in pieces():
            acc.add(x, keys)
        return acc.result()
    import queue
    import threading

    todo: queue.Queue = queue.Queue(maxsize=workers)
    accs = [KeyHistogram(lo, shift, nbins, use_triton) for _ in range(workers)]
    errors: list[BaseException] = []

    def work(acc):
        while (item := todo.get()) is not None:
            try:
                if not errors:
                    acc.add(*item)
            except BaseException as e:  # hand it to the caller
                errors.append(e)

    threads = [threading.Thread(target=work, args=(a,), daemon=True) for a in accs]
    for t in threads:
        t.start()
    try:
        for item in pieces():
            if errors:
                break
            todo.put(item)
    finally:
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return sum(a.result() for a in accs)


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


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class Target:
    name: str  # canonical name (tied aliases listed separately)
    shape: tuple[int, ...]
    dtype: str
    numel: int
    sparsity: float
    mode: str  # layer | row | global | nm
    k: int  # values to prune: in the tensor (layer), in every row (row), or 0 for global (decided later)
    aliases: list[str] = field(default_factory=list)


@dataclass
class PrunePlan:
    config: object  # recipes.prune.PruneConfig
    criterion: Criterion
    targets: list[Target]
    alias_of: dict[str, str]  # every member of a targeted tied group -> its canonical name
    pool_k: int = 0  # global scope: values to prune over the pool
    pool_numel: int = 0
    total_params: int = 0

    @property
    def pool(self) -> list[Target]:
        return [t for t in self.targets if t.mode == "global"]

    def target(self, name: str) -> Target | None:
        canon = self.alias_of.get(name, name)
        return self._by_name.get(canon)

    def __post_init__(self):
        self._by_name = {t.name: t for t in self.targets}


def plan_prune(ck: Checkpoint, cfg) -> PrunePlan:
    """Everything checked before a value is read: targets, tied groups, counts, N:M divisibility."""
    criterion = get_criterion(cfg.method)
    names = select_targets(ck, cfg.include, cfg.exclude)
    if not names:
        raise SurgeonError(
            f"{ck.label} has no tensor to prune (no 2-D float weight of a linear layer)",
            "choose tensors with --include REGEX",
        )
    aliases = ck.tied_aliases()
    canon = lambda n: aliases.get(n, n)  # noqa: E731
    members: dict[str, list[str]] = {}
    for n in ck.names():
        members.setdefault(canon(n), []).append(n)
    chosen = []
    for n in names:
        c = canon(n)
        if c not in chosen:
            chosen.append(c)
    order = {n: i for i, n in enumerate(ck.names())}
    chosen.sort(key=order.__getitem__)
    nm = cfg.nm
    problems, targets, alias_of = [], [], {}
    for name in chosen:
        info = ck.info(name)
        s = cfg.sparsity_for(name)
        last = info.shape[-1] if info.shape else 1
        if nm:
            mode = "nm"
            if last % nm[1]:
                problems.append(
                    f"{name} {list(info.shape)}: rows of {last} values are not a multiple of M={nm[1]} for --pattern {cfg.pattern}"
                )
            k = info.numel - info.numel // nm[1] * nm[0]
        elif cfg.scope == "row":
            mode, k = "row", prune_count(s, last)
        elif cfg.scope == "global" and criterion.global_mode == "radix" and s == cfg.target_sparsity:
            mode, k = "global", 0
        else:
            mode, k = "layer", prune_count(s, info.numel)
        group = members.get(name, [name])
        for m_ in group:
            alias_of[m_] = name
        targets.append(Target(name, tuple(info.shape), info.dtype, info.numel, s, mode, k, [m_ for m_ in group if m_ != name]))
    if len(problems) == 1:
        raise SurgeonError(problems[0], "exclude the tensor with --exclude, or pick another M")
    if problems:
        raise PlanError(problems, f"--pattern {cfg.pattern}")
    plan = PrunePlan(cfg, criterion, targets, alias_of, total_params=sum(i.numel for i in ck.infos()))
    if cfg.scope == "global" and not nm:
        same = [t for t in targets if t.sparsity == cfg.target_sparsity]
        total = sum(t.numel for t in same)
        if criterion.global_mode == "radix":
            plan.pool_numel, plan.pool_k = total, prune_count(cfg.target_sparsity, total)
        else:
            counts = proportional_counts({t.name: t.numel for t in same}, prune_count(cfg.target_sparsity, total))
            for t in same:
                t.k = counts[t.name]
    return plan


# --------------------------------------------------------------------------------------------
# the stream


@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    sparsity_target: float
    mode: str
    pruned: int
    zeros_before: int
    zeros: int
    threshold: float | None
    aliases: list[str]
    nm_compliant: bool | None = None

    def as_dict(self) -> dict:
        d = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "sparsity_target": self.sparsity_target,
            "mode": self.mode,
            "pruned": self.pruned,
            "zeros_before": self.zeros_before,
            "zeros": self.zeros,
            "sparsity": self.zeros / self.numel if self.numel else 0.0,
            "threshold": self.threshold,
            "aliases": self.aliases,
        }
        if self.nm_compliant is not None:
            d["nm_compliant"] = self.nm_compliant
        return d


class PruneRun:
    """Runs a plan: ``select()`` (global statistics passes), then ``tensors()`` streams the output."""

    def __init__(
        self,
        ck: Checkpoint,
        plan: PrunePlan,
        device: torch.device | str = "cpu",
        use_triton: bool | None = None,
        advance: Callable[[int], None] = lambda n: None,
    ):
        from modelsurgeon.kernels import should_use_triton

        self.ck, self.plan, self.device = ck, plan, torch.device(device)
        self.use_triton = use_triton
        self.triton = should_use_triton(self.device, use_triton)
        self.advance = advance
        self.results: list[TensorResult] = []
        self.selection: Selection | None = None
        self._ties: TieCutter | None = None

    # --- global statistics
    def stats_passes(self) -> int:
        """How many reads of the pool the global selection needs (for progress totals)."""
        pool = self.plan.pool
        if not pool or self.plan.pool_k == 0:
            return 0
        return len(select_levels(self._final_shift(), self.triton))

    def _final_shift(self) -> int:
        if not self.plan.criterion.fused:
            return 0
        return resolution_shift([self.ck.info(t.name).torch_dtype for t in self.plan.pool])

    def _pool_pieces(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        crit, cfg = self.plan.criterion, self.plan.config

        def read():
            for t in self.plan.pool:
                info = self.ck.info(t.name)
                if crit.fused:
                    for c in self.ck.iter_chunks(t.name, CHUNK):
                        yield c, None, c.numel() * c.element_size()
                else:
                    w = self.ck.get(t.name)
                    keys = crit.keys(w, t.name, cfg.seed)
                    for piece, kp in tensor_pieces(w, keys)():
                        yield piece, kp, info.nbytes * piece.numel() // max(info.numel, 1)

        for piece, kp, nbytes in prefetched(read(), depth=2):
            yield piece.to(self.device), None if kp is None else kp.to(self.device)
            self.advance(nbytes)

    def select(self) -> Selection | None:
        if not self.plan.pool:
            return None
        levels = select_levels(self._final_shift(), self.triton)
        workers = 1 if self.triton else STATS_WORKERS
        self.selection = radix_select(self._pool_pieces, self.plan.pool_k, levels, self.use_triton, workers)
        self._ties = TieCutter(self.selection, self.use_triton)
        return self.selection

    # --- streaming
    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor of the checkpoint in order, targets pruned; fills ``self.results`` (in order).

        On the CPU, ``workers`` tensors are pruned at once on a thread pool (torch releases the GIL);
        what depends on order (the global tie budget) is decided here, in order, before a task starts.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        workers = 1 if self.triton else APPLY_WORKERS  # one CUDA stream; and the interpreter is not thread-safe
        pool = ThreadPoolExecutor(workers, thread_name_prefix="prune") if workers > 1 else None
        pending: deque = deque()  # (name, future or tensor, nbytes, owns the result row)
        groups: dict[str, object] = {}  # canonical name -> future of its pruned tensor (tied groups)
        left: dict[str, int] = {}

        def submit(fn, *args):
            if pool is None:
                from concurrent.futures import Future

                f: Future = Future()
                f.set_result(fn(*args))
                return f
            return pool.submit(fn, *args)

        def ready():
            name, item, nbytes, owner = pending.popleft()
            if isinstance(item, torch.Tensor):
                return name, item, nbytes
            out, result = item.result()
            if owner:
                self.results.append(result)
            return name, out, nbytes

        try:
            for name, w in self.ck.iter_tensors():
                target = self.plan.target(name)
                nbytes = w.numel() * w.element_size()
                if target is None:
                    pending.append((name, w, nbytes, False))
                else:
                    canon = target.name
                    owner = canon not in groups
                    if owner:
                        src = w if name == canon else self.ck.get(canon)
                        groups[canon] = submit(self._prune, target, *self._prepare(target, src))
                        left[canon] = 1 + len(target.aliases)
                    pending.append((name, groups[canon], nbytes, owner))
                    left[canon] -= 1
                    if left[canon] == 0:
                        del groups[canon]
                while len(pending) >= max(workers, 2) or (pending and isinstance(pending[0][1], torch.Tensor)):
                    name_, out, nb = ready()
                    yield name_, out
                    self.advance(nb)
            while pending:
                name_, out, nb = ready()
                yield name_, out
                self.advance(nb)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self._ties is not None and not self._ties.done:
            raise SurgeonError("the global selection did not add up", "the checkpoint changed while it was read; run again")
        pruned = sum(r.pruned for r in self.results if r.mode == "global")
        if self.selection is not None and pruned != self.plan.pool_k:
            raise SurgeonError(
                f"pruned {pruned} values where the plan said {self.plan.pool_k}",
                "the checkpoint changed while it was read; run again",
            )

    def _prepare(self, target: Target, w: torch.Tensor):
        """In order: the tensor on its device, its keys, and (global scope) its share of the tie budget."""
        cfg, crit = self.plan.config, self.plan.criterion
        keys = crit.keys(w, target.name, cfg.seed)
        in_place = self.ck.kind == "safetensors" and self.device.type == "cpu"
        x = w.to(self.device) if self.device.type != "cpu" else (w if in_place else w.clone())
        if keys is not None:
            keys = keys.to(self.device)
        cut = self._ties.cut(x, keys) if target.mode == "global" and x.numel() else None
        return x, keys, cut

    def _prune(self, target: Target, x: torch.Tensor, keys: torch.Tensor | None, cut: int | None):
        cfg = self.plan.config
        n = x.numel()
        zeros_before = n - count_nonzero(x)
        threshold, compliant, zeros = None, None, None
        if n == 0:
            out, kept = x, 0
        elif target.mode == "nm":
            nn, mm = cfg.nm
            out, kept = nm_mask(x, nn, mm, keys=keys, out=x, use_triton=self.use_triton)
            kept = int(kept)
        elif target.mode == "row":
            x2 = x.reshape(-1, x.shape[-1] if x.dim() else 1)
            t, cut = row_selection(x2, target.k, None if keys is None else keys.reshape(x2.shape))
            out, kept = threshold_mask(x2, t, cut, keys=keys, out=x2, use_triton=self.use_triton)
            out, kept = out.view(x.shape), int(kept)
        else:
            if target.mode == "global":
                sel = self.selection
            else:
                sel = select_in_tensor(x, target.k, keys, self.use_triton)
                cut = cut_for(x, sel, keys)
            out, kept = apply_selection(x, sel, cut, keys, out=x, use_triton=self.use_triton)
            if keys is None:
                threshold = sel.threshold
            if sel.t > 0:  # every zero had a key below the threshold and went; the kept are nonzero
                zeros = n - kept
        if zeros is None:
            zeros = n - count_nonzero(out)
        if target.mode == "nm":
            from modelsurgeon.ops.core.sparsity import nm_compliant

            nn, mm = cfg.nm
            compliant = nm_compliant(out.reshape(-1), nn, mm) if n else True
        result = TensorResult(
            target.name,
            target.shape,
            target.dtype,
            n,
            target.sparsity,
            target.mode,
            n - kept,
            zeros_before,
            zeros,
            threshold,
            list(target.aliases),
            compliant,
        )
        return (out.to("cpu") if out.device.type != "cpu" else out), result
