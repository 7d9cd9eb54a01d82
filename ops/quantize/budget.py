"""`quantize --target-bpw B`: a scheme per tensor, from a candidate list, averaging at most B bits per weight
with the least total error.

    choices = choose_schemes(plan, progress)   # one pass: every target through every candidate, errors kept
    plan.spec_for(name)                        # now the chosen scheme of each target

The error of a tensor under a scheme is its noise energy ``||w - w'||^2``, the number the run reports as
SQNR (data-free: without calibration statistics every weight counts the same). With ``--imatrix`` (GGUF:
llama-imatrix's mean squared activation per input column) it is activation-weighted,
``sum_j im_j sum_i (w_ij - w'_ij)^2`` (the expected squared output error of the layer when its inputs are
uncorrelated), and each candidate is quantized as the run will quantize it, its block search steered by the
same matrix. ``allocate`` solves the
multiple-choice knapsack the way rate-distortion allocation does: every tensor starts at its cheapest
candidate, then the upgrade with the most error removed per added bit is taken while the budget allows,
along each tensor's lower convex hull of (bits, error); ties go to the earlier tensor, so the choice is
deterministic. The result is never worse than any uniform candidate that fits the budget (checked, and
taken when it is better).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.progress import SILENT, Progress

from .plan import QuantizePlan, quant_spec
from .schemes import quantize_weight


@dataclass(frozen=True)
class Option:
    scheme: str
    bits: float  # total bits of the tensor under this scheme (codes + scales)
    noise: float  # ||w - w'||^2


def _hull(options: list[Option]) -> list[Option]:
    """The options worth taking, cheapest first: less error for more bits, with diminishing returns."""
    pts: list[Option] = []
    for p in sorted(options, key=lambda o: (o.bits, o.noise)):
        if pts and p.noise >= pts[-1].noise:
            continue  # more bits, no less error
        while len(pts) >= 2 and _gain(pts[-2], pts[-1]) <= _gain(pts[-1], p):
            pts.pop()
        pts.append(p)
    return pts


def _gain(a: Option, b: Option) -> float:
    return (a.noise - b.noise) / (b.bits - a.bits) if b.bits > a.bits else math.inf


def allocate(options: dict[str, list[Option]], budget_bits: float, weights: int) -> dict[str, str]:
    """The scheme of each tensor: total bits <= ``budget_bits``, least total noise (greedy on the hulls);
    ``weights`` (the number of weights) only words the message when the budget is too small."""
    names = list(options)
    hulls = [_hull(options[n]) for n in names]
    level = [0] * len(names)
    used = sum(h[0].bits for h in hulls)
    if used > budget_bits * (1 + 1e-12):
        raise SurgeonError(
            f"--target-bpw is below what the cheapest candidates need ({used / weights:.4g} bits per weight)",
            "raise --target-bpw or add a smaller scheme to --candidates",
        )
    heap = [(-_gain(h[0], h[1]), i) for i, h in enumerate(hulls) if len(h) > 1]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        h, k = hulls[i], level[i]
        extra = h[k + 1].bits - h[k].bits
        if used + extra > budget_bits * (1 + 1e-12):
            continue  # this tensor's next step does not fit; smaller steps of others may
        used += extra
        level[i] = k + 1
        if k + 2 < len(h):
            heapq.heappush(heap, (-_gain(h[k + 1], h[k + 2]), i))
    choice = {n: hulls[i][level[i]].scheme for i, n in enumerate(names)}
    best = sum(hulls[i][level[i]].noise for i in range(len(names)))
    for scheme in sorted({o.scheme for opts in options.values() for o in opts}):  # never worse than uniform
        pick = [next((o for o in options[n] if o.scheme == scheme), None) for n in names]
        if None in pick:
            continue  # not a choice for every tensor
        if sum(o.bits for o in pick) <= budget_bits * (1 + 1e-12) and sum(o.noise for o in pick) < best:
            best = sum(o.noise for o in pick)
            choice = {n: scheme for n in names}
    return choice


def column_importance(plan: QuantizePlan) -> dict:
    """Per target (HF name), one weight per input column from ``--imatrix`` (llama-imatrix's mean squared
    activations), for the 2-D GGUF tensors it covers; empty without an importance matrix."""
    import torch

    if plan.imatrix is None or plan.gguf_tensors is None:
        return {}
    out = {}
    for t in plan.gguf_tensors:
        im = plan.imatrix.weights.get(t.name)
        if im is not None and len(t.shape) == 2 and im.size == t.shape[-1] and t.hf_name in plan.targets:
            out[t.hf_name] = torch.from_numpy(im).float()
    return out


def weighted_energies(w, deq, im) -> tuple[float, float]:
    """(sum_j im_j sum_i w_ij^2, sum_j im_j sum_i (w_ij - deq_ij)^2): the output error a column's mean squared
    activation ``im_j`` makes of a weight error, summed over the tensor."""
    wf = w.float()
    sig = float((wf.square().sum(0) * im).sum())
    noise = float(((wf - deq.float()).square().sum(0) * im).sum())
    return sig, noise


def choose_schemes(plan: QuantizePlan, progress: Progress = SILENT) -> list[dict]:
    """Measure every target under every candidate (one read of each), choose, and set ``plan.specs``.
    Returns one row per target: the chosen scheme and each candidate's bits per weight and SQNR."""
    cfg = plan.config
    notes: list[str] = []
    specs = {c: plan.spec if c == cfg.scheme else quant_spec(cfg.candidate(c), notes) for c in cfg.candidates}
    options: dict[str, list[Option]] = {}
    numel: dict[str, int] = {}
    signal: dict[str, float] = {}
    targets = set(plan.targets)
    importance = column_importance(plan)
    progress.start("measure candidates", sum(plan.ck.info(n).nbytes for n in plan.targets), "bytes")
    for name, w in plan.ck.iter_tensors([n for n in plan.ck.names() if n in targets]):
        wd = w.to(plan.device) if plan.device.type != "cpu" else w
        numel[name] = w.numel()
        im = importance.get(name)
        opts = []
        for c, spec in specs.items():
            if spec.scheme.family == "gguf" and w.shape[-1] % spec.group_size:
                continue  # a GGUF type whose blocks do not fit the rows (K-quants: 256) is no choice here
            if im is None:
                qw = quantize_weight(wd, spec, cfg.use_triton, need_dequant=False)
                sig, noise = float(qw.extra["signal"]), float(qw.extra["noise"])
            else:  # as the run quantizes it (the importance matrix steers the block search), error weighted alike
                qw = quantize_weight(wd.reshape(-1, w.shape[-1]), spec, cfg.use_triton, need_dequant=True, imatrix=im)
                sig, noise = weighted_energies(wd.reshape(-1, w.shape[-1]), qw.dequantized, im.to(wd.device))
            opts.append(Option(c, qw.bits_per_weight * w.numel(), noise))
            signal[name] = sig
        options[name] = opts
        progress.advance(plan.ck.info(name).nbytes)
    total = sum(numel.values())
    choice = allocate(options, cfg.target_bpw * total, total)
    plan.specs = {n: specs[choice[n]] for n in options if choice[n] != cfg.scheme}
    if plan.gguf_tensors is not None:  # the chosen types replace the scheme's in the file's layout and header
        from .plan import replan_gguf

        replan_gguf(plan)
    rows = []
    for n, opts in options.items():
        rows.append(
            {
                "name": n,
                "scheme": choice[n],
                "candidates": {
                    o.scheme: {
                        "bits_per_weight": o.bits / numel[n],
                        "sqnr_db": 10 * math.log10(signal[n] / o.noise) if o.noise > 0 and signal[n] > 0 else None,
                    }
                    for o in opts
                },
            }
        )
    return rows
