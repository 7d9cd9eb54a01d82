"""Gradual magnitude pruning for training loops (Zhu & Gupta 2017, "To prune, or not to prune").

    pruner = GradualPruner(model, final_sparsity=0.9, start_step=200, end_step=2000, frequency=100)
    for step, (x, y) in enumerate(batches):
        loss_fn(model(x), y).backward()
        optimizer.step(); optimizer.zero_grad()
        pruner.step()                    # after every optimizer step

The sparsity follows the cubic schedule s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))^3 for
t = t0, t0 + Δt, ..., t0 + n·Δt = end_step: it rises fast while many weights are redundant and slowly
as it nears s_f. At each of those steps the masks are recomputed from |w| (with the same exact-count
selection and Triton threshold kernel as `surgeon prune`: every tensor, or all of them with
``scope="global"``, loses exactly round(s_t × n) weights); after every step the pruned weights are set
back to zero, so the optimizer can never revive them. Pruned weights are zero, hence the smallest, so
a weight once pruned stays pruned as s_t grows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .keys import abs_key, resolution_shift
from .select import (
    Selection,
    TieCutter,
    apply_selection,
    cut_for,
    prune_count,
    radix_select,
    select_in_tensor,
    select_levels,
    tensor_pieces,
)


def cubic_sparsity(t: int, initial: float, final: float, start: int, end: int, frequency: int) -> float:
    """The scheduled sparsity at step t: 0 before ``start``, held between mask updates, ``final`` from ``end`` on."""
    if t < start:
        return 0.0
    if t >= end or end == start:
        return final
    last_update = start + (t - start) // frequency * frequency
    return final + (initial - final) * (1 - (last_update - start) / (end - start)) ** 3


def _named_params(params) -> list[tuple[str, torch.nn.Parameter]]:
    if isinstance(params, torch.nn.Module):
        return [
            (f"{name}.weight" if name else "weight", m.weight)
            for name, m in params.named_modules()
            if isinstance(m, torch.nn.Linear)
        ]
    out = []
    for i, p in enumerate(params):
        out.append(p if isinstance(p, tuple) else (f"param{i}", p))
    return out


class GradualPruner:
    """Masks that follow a cubic sparsity schedule during training; see the module doc.

    ``params``: a module (all ``nn.Linear`` weights are pruned), or an iterable of parameters or of
    ``(name, parameter)`` pairs. ``scope``: ``"layer"`` (every tensor at the scheduled sparsity) or
    ``"global"`` (one magnitude threshold over all of them).
    """

    def __init__(
        self,
        params: torch.nn.Module | Iterable,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
        scope: str = "layer",
        use_triton: bool | None = None,
    ):
        if not 0 <= initial_sparsity <= final_sparsity < 1:
            raise ValueError(f"need 0 <= initial_sparsity <= final_sparsity < 1, got {initial_sparsity}, {final_sparsity}")
        if not 0 <= start_step <= end_step or frequency < 1:
            raise ValueError(f"need 0 <= start_step <= end_step and frequency >= 1, got {start_step}, {end_step}, {frequency}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.params = _named_params(params)
        if not self.params:
            raise ValueError("nothing to prune: no nn.Linear weight or parameter given")
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.scope, self.use_triton = scope, use_triton
        self.masks: dict[str, torch.Tensor] = {}
        self.step_count = 0
        self.sparsity = 0.0  # the sparsity the masks were last computed for

    # --- the schedule
    def sparsity_at(self, t: int) -> float:
        return cubic_sparsity(t, self.initial_sparsity, self.final_sparsity, self.start_step, self.end_step, self.frequency)

    def is_update_step(self, t: int) -> bool:
        return self.start_step <= t <= self.end_step and ((t - self.start_step) % self.frequency == 0 or t == self.end_step)

    # --- the training-loop API
    @torch.no_grad()
    def step(self, t: int | None = None) -> None:
        """Call after each optimizer step: update the masks when the schedule says so, then apply them."""
        t = self.step_count if t is None else t
        if self.is_update_step(t):
            self.update_masks(self.sparsity_at(t))
        self.apply()
        self.step_count = t + 1

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (the optimizer may have moved them)."""
        for name, p in self.params:
            m = self.masks.get(name)
            if m is not None:
                p.mul_(m)

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Recompute every mask from |w| at this sparsity, exactly, and zero what it prunes."""
        self.sparsity = sparsity
        if self.scope == "layer":
            for name, p in self.params:
                sel = select_in_tensor(p.data, prune_count(sparsity, p.numel()), use_triton=self.use_triton)
                self._apply(name, p, sel, cut_for(p.data, sel, None))
            return
        k = prune_count(sparsity, sum(p.numel() for _, p in self.params))

        def pieces():
            for _, p in self.params:
                yield from tensor_pieces(p.data, None)()

        from modelsurgeon.kernels import should_use_triton

        triton = should_use_triton(self.params[0][1].device, self.use_triton)
        levels = select_levels(resolution_shift([p.dtype for _, p in self.params]), triton)
        sel = radix_select(pieces, k, levels, self.use_triton)
        ties = TieCutter(sel, self.use_triton)
        for name, p in self.params:
            self._apply(name, p, sel, ties.cut(p.data))

    def _apply(self, name: str, p: torch.Tensor, sel: Selection, cut: int) -> None:
        w = p.data if p.data.is_contiguous() else p.data.contiguous()
        keys = abs_key(w) if sel.t <= 0 else None  # only when zeros may be kept do we need the keys
        out, kept = apply_selection(w, sel, cut, out=w, use_triton=self.use_triton)
        mask = out != 0
        if int(torch.count_nonzero(mask)) != kept:  # some kept weights are exactly zero: build the mask from keys
            flat = keys.reshape(-1)
            mask = flat > sel.t
            mask[cut:] |= flat[cut:] == sel.t
            mask = mask.view(w.shape)
        if w is not p.data:
            p.data.copy_(w)
        self.masks[name] = mask

    # --- inspection and checkpoints
    def actual_sparsity(self) -> dict[str, float]:
        return {name: 1 - int(torch.count_nonzero(p)) / p.numel() for name, p in self.params}

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "sparsity": self.sparsity, "masks": {k: v.clone() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.sparsity = int(state["step_count"]), float(state["sparsity"])
        self.masks = {k: v.clone() for k, v in state["masks"].items()}
