"""The problem an intrinsic-dimension measurement trains: the model, the D parameters that join the
subspace (flattened in module order), theta_0, and a forward pass through ``torch.func.functional_call`` on
a flat vector theta = theta_0 + P theta_d, so the module is never mutated during training.

``--include``/``--exclude`` choose the parameters (the rest stay frozen at theta_0); with ``--said`` each of
the m chosen tensors gets one learned scale (Aghajanyan et al.), taken out of d.
"""

from __future__ import annotations

import torch

from modelsurgeon.ops.core.errors import SurgeonError, typed
from modelsurgeon.ops.io.targets import compile_regex


class Problem:
    def __init__(
        self, built, task=None, device="cpu", include: str | None = None, exclude: str | None = None, said: bool = False
    ):
        self.built, self.task = built, task
        self.device = torch.device(device)
        module = built.module
        module.float().to(self.device)
        module.requires_grad_(False)
        self.module = module
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        inc, exc = compile_regex(include, "--include"), compile_regex(exclude, "--exclude")
        if inc is not None:
            named = [(n, p) for n, p in named if inc.search(n)]
            if not named:
                raise SurgeonError(
                    f"--include {typed(include)} matches no parameter of the model", "names look like " + _examples(module)
                )
        if exc is not None:
            before = len(named)
            named = [(n, p) for n, p in named if not exc.search(n)]
            if len(named) == before:
                raise SurgeonError(
                    f"--exclude {typed(exclude)} matches no parameter of the model", "names look like " + _examples(module)
                )
            if not named:
                raise SurgeonError(f"--exclude {typed(exclude)} leaves no parameter to train")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.offsets = [0]
        for k in self.numels:
            self.offsets.append(self.offsets[-1] + k)
        self.D = self.offsets[-1]
        self.include, self.exclude = include, exclude
        self.said = said
        self.m = len(self.names) if said else 0  # SAID spends m of the d numbers on the scales
        self._numels_t = torch.tensor(self.numels, device=self.device)
        self.frozen = sum(p.numel() for p in module.parameters()) - self.D
        if task is not None:
            task.to(self.device)

    def theta0(self, seed_offset: int, init_seed: int, reinit: bool = True) -> torch.Tensor:
        """theta_0 for one seed: re-initialises the seed-dependent tensors (architecture, new head) first."""
        if reinit and self.built.reinit is not None:
            self.built.reinit(init_seed + seed_offset)
        params = dict(self.module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names]).to(self.device)

    def flat(self, theta0: torch.Tensor, delta: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """theta_0 + delta, each tensor's part of delta times its SAID scale when there are scales."""
        if scales is None:
            return theta0 + delta
        return theta0 + scales.repeat_interleave(self._numels_t) * delta

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        # split, not slices: the backward of one split is one concatenation, while each slice's backward
        # would write a zero-filled gradient of all D entries (100 tensors x 11M = seconds per step on MiniLM)
        return {n: piece.view(s) for n, piece, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def forward(self, flat: torch.Tensor, batch):
        return torch.func.functional_call(self.module, self.params(flat), batch.args, batch.kwargs)

    def layout(self) -> list[list]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]


def _examples(module) -> str:
    names = [n for n, _ in module.named_parameters()]
    return ", ".join(names[:2] + names[-1:]) + " (see `surgeon intrinsic-dim --help`)"
