"""The layer-by-layer engine: calibration activations through one layer at a time, a method applied in between.

    stream = LayerStream(lm, batches, method, progress)      # lm: model.LayerwiseModel; batches: token ids
    for name, tensor, payload in stream:                     # every checkpoint tensor once, in ``stream.order``
        ...                                                  # payload: what the method made of it (or None)

Order: the tensors outside the layers first (embeddings, final norm, head: passed through as read), then layer
0's tensors, layer 1's, ... So a writer given ``stream.order`` streams, and memory holds one layer.

For each layer: its weights are read onto the device; if the method needs statistics, forward hooks on the
linears it changes accumulate them while every calibration batch runs through the layer; the method changes
the weights; the layer runs again with the changed weights (rounded to the checkpoint's dtype, i.e. what is
written) and its outputs become the next layer's inputs, as the official Wanda/SparseGPT/GPTQ code does (a
method with ``rerun = False``, AWQ, keeps the first outputs instead, as llm-awq does). Peak memory: one layer,
its statistics, and the inputs and outputs of the calibration batches (on ``store``: the device, or the CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from modelsurgeon.ops.core.progress import SILENT, Progress

from .memory import layer_sized_blocks_unmapped, release_freed_memory
from .model import LayerCall, LayerwiseModel
from .stats import InputStats, group_by_input


@dataclass
class LayerContext:
    """What a method sees of one layer."""

    lm: LayerwiseModel
    index: int
    layer: nn.Module
    linears: dict[str, nn.Linear]  # name inside the layer -> module (the ones the method watches)
    ck_names: dict[str, str]  # name inside the layer -> checkpoint name of its weight
    stats: dict[str, InputStats]  # name inside the layer -> its input's statistics (shared by q/k/v ...)
    xs: list[torch.Tensor]  # the layer's input batches
    calls: list[LayerCall]  # the model's call arguments for each batch
    dtypes: dict[str, torch.dtype]  # name inside the layer -> the checkpoint dtype of its weight

    def run(self, module: nn.Module, x: torch.Tensor, b: int) -> torch.Tensor:
        """``module`` (the layer, or a block inside it) on batch b's input ``x`` with the layer's call arguments."""
        if module is self.layer:
            return self.lm.call(self.layer, self.index, x, self.calls[b])
        args, kwargs = self.calls[b].args(self.index)
        out = module(x, **_accepted(module, kwargs))
        return out[0] if isinstance(out, (tuple, list)) else out


def _accepted(module: nn.Module, kwargs: dict) -> dict:
    """The layer's keyword arguments that a block inside it takes (attention takes masks and positions; an MLP none)."""
    import inspect

    params = inspect.signature(module.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


class LayerMethod:
    """A calibrated method, one layer at a time (subclasses in ``methods.py``)."""

    name = "dense"
    kinds: frozenset[str] = frozenset()  # statistics it needs: norms, hessian, inputs
    rerun = True  # feed the next layer the outputs of the changed layer (else the first run's)

    def watch(self, lm: LayerwiseModel, index: int, linears: dict[str, nn.Linear]) -> list[str]:
        """The linears (names inside the layer) whose input statistics this method needs."""
        return []

    def prepare(self, stream: LayerStream) -> None:
        """Before the first layer (OWL runs a dense statistics pass here)."""

    def apply(self, ctx: LayerContext) -> dict[str, object]:
        """Change the layer's weights; return checkpoint name -> payload for the writer."""
        return {}


@dataclass
class StreamStats:
    layers: int = 0
    tokens: int = 0
    peak_stats_bytes: int = 0
    activation_bytes: int = 0
    notes: list[str] = field(default_factory=list)


class LayerStream:
    """Iterate (checkpoint name, tensor in its checkpoint dtype on the CPU, payload) in ``order``."""

    def __init__(
        self,
        lm: LayerwiseModel,
        batches: list[torch.Tensor],
        method: LayerMethod | None = None,
        progress: Progress = SILENT,
        store: torch.device | None = None,
        description: str = "calibrate",
    ):
        layer_sized_blocks_unmapped()
        self.lm, self.batches = lm, batches
        self.method = method or LayerMethod()
        self.progress = progress
        self.store = store or lm.device
        self.description = description
        self.outer = lm.outer_names()
        self.order = self.outer + [src for i in range(lm.num_layers) for _, src in lm.layer_names(i)]
        self.stats = StreamStats(layers=lm.num_layers, tokens=sum(b.numel() for b in batches))

    # --- the passes
    def embed(self) -> tuple[list[torch.Tensor], list[LayerCall]]:
        xs, calls = [], []
        for b in self.batches:
            x, kw = self.lm.embed(b)
            xs.append(x.to(self.store))
            calls.append(kw)
        self.stats.activation_bytes = sum(x.numel() * x.element_size() for x in xs)
        return xs, calls

    def collect(self, ctx: LayerContext, names: list[str], keep_outputs: bool) -> list[torch.Tensor] | None:
        """Run every batch through the layer with hooks on ``names``; fill ``ctx.stats``; maybe keep the outputs."""
        dev = self.lm.device
        if not names:
            return None
        probe: list[tuple[str, torch.Tensor]] = []
        hooks = [ctx.linears[n].register_forward_hook(lambda m, inp, out, n=n: probe.append((n, inp[0].detach()))) for n in names]
        outs = []
        try:
            y = ctx.run(ctx.layer, ctx.xs[0].to(dev), 0)
        finally:
            for h in hooks:
                h.remove()
        rep = group_by_input(probe)
        kinds = set(self.method.kinds)
        for n in names:
            if rep[n] == n:
                cols = ctx.linears[n].in_features
                ctx.stats[n] = InputStats(cols, kinds, dev, self.store)
        for n in names:
            ctx.stats[n] = ctx.stats[rep[n]]
        for n, x in probe:
            if rep[n] == n:
                ctx.stats[n].add(x)
        probe.clear()
        if keep_outputs:
            outs.append(y.to(self.store))
        del y
        reps = [n for n in names if rep[n] == n]
        hooks = [ctx.linears[n].register_forward_hook(lambda m, inp, out, n=n: ctx.stats[n].add(inp[0].detach())) for n in reps]
        try:
            for b in range(1, len(ctx.xs)):
                y = ctx.run(ctx.layer, ctx.xs[b].to(dev), b)
                if keep_outputs:
                    outs.append(y.to(self.store))
        finally:
            for h in hooks:
                h.remove()
        seen = {id(s): s for s in ctx.stats.values()}
        self.stats.peak_stats_bytes = max(self.stats.peak_stats_bytes, sum(s.nbytes() for s in seen.values()))
        return outs if keep_outputs else None

    def forward(self, ctx: LayerContext) -> list[torch.Tensor]:
        dev = self.lm.device
        return [ctx.run(ctx.layer, x.to(dev), b).to(self.store) for b, x in enumerate(ctx.xs)]

    def context(self, i: int, layer: nn.Module, xs, calls) -> LayerContext:
        lm = self.lm
        all_linears = lm.linears(layer)
        watched = self.method.watch(lm, i, all_linears)
        ck_names = {n: lm.ck_name(f"{lm.layers_path}.{i}.{n}.weight") for n in all_linears}
        dtypes = {n: lm.ck.info(ck_names[n]).torch_dtype for n in all_linears if ck_names[n] in lm.ck}
        return LayerContext(lm, i, layer, {n: all_linears[n] for n in watched}, ck_names, {}, xs, calls, dtypes)

    def dense_layers(self) -> Iterator[tuple[LayerContext, list[str]]]:
        """A pass that changes nothing: yields each layer's context with its statistics collected (OWL)."""
        xs, calls = self.embed()
        self.progress.start(f"{self.description}: statistics", self.lm.num_layers, "layers")
        for i in range(self.lm.num_layers):
            with self.lm.layer(i) as layer:
                ctx = self.context(i, layer, xs, calls)
                names = list(ctx.linears)
                ys = self.collect(ctx, names, keep_outputs=True) if names else self.forward(ctx)
                yield ctx, names
                ctx.stats.clear()
            xs = ys
            release_freed_memory()
            self.progress.advance(1)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, object]]:
        lm = self.lm
        self.method.prepare(self)
        for name in self.outer:
            yield name, lm.ck.get(name), None
        xs, calls = self.embed()
        self.progress.start(self.description, lm.num_layers, "layers")
        for i in range(lm.num_layers):
            with lm.layer(i) as layer:
                ctx = self.context(i, layer, xs, calls)
                names = list(ctx.linears)
                keep = not self.method.rerun
                ys = self.collect(ctx, names, keep_outputs=keep) if names else None
                payloads = self.method.apply(ctx)
                ctx.stats.clear()
                self._round_to_checkpoint(layer, i)
                if ys is None:
                    ys = self.forward(ctx)
                tensors = [(src, t) for (_, src), t in zip(lm.layer_names(i), layer.state_dict().values())]
                for src, t in tensors:
                    yield src, t.detach().to("cpu", lm.ck.info(src).torch_dtype), payloads.get(src)
            del ctx
            xs = ys
            release_freed_memory()
            self.progress.advance(1)

    def _round_to_checkpoint(self, layer: nn.Module, i: int) -> None:
        """Every tensor as the checkpoint's dtype holds it (what is written is what the next layer sees)."""
        with torch.no_grad():
            for (_, src), t in zip(self.lm.layer_names(i), layer.state_dict().values()):
                dt = self.lm.ck.info(src).torch_dtype
                if dt != t.dtype and dt.is_floating_point:
                    t.copy_(t.to(dt).to(t.dtype))

    # --- for eval
    def hidden_states(self) -> list[torch.Tensor]:
        """The last layer's outputs for every batch (nothing changes, nothing is yielded)."""
        xs, calls = self.embed()
        self.progress.start(self.description, self.lm.num_layers, "layers")
        for i in range(self.lm.num_layers):
            with self.lm.layer(i) as layer:
                ctx = self.context(i, layer, xs, calls)
                ys = self.forward(ctx)
            xs = ys
            release_freed_memory()
            self.progress.advance(1)
        return xs
