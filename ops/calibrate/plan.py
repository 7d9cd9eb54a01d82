"""The calibration plan: the model's skeleton, the calibration sequences, which linears a method changes, and
what the run will hold in memory, all known before a layer is read.

    cplan = plan_calibration(ck, calib_cfg, "gptq", targets, device)   # tokenizes the text, builds the skeleton
    cplan.describe()                                                    # --dry-run: layers, linears, memory
    for name, tensor, payload in cplan.stream(method, progress): ...   # engine.LayerStream

The prune and quantize commands plan their own side (targets, counts, formats, the output) and hand this plan a
method; the API puts the two together (``modelsurgeon/api.py``), so neither family imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.units import fmt_bytes
from modelsurgeon.ops.io.checkpoint import Checkpoint
from modelsurgeon.recipes.calibrate import CalibrationConfig

from .data import BUILTIN, builtin_text, calibration_ids, load_tokenizer, read_text, tokenize
from .engine import LayerMethod, LayerStream
from .model import LayerwiseModel


@dataclass
class CalibrationPlan:
    ck: Checkpoint
    lm: LayerwiseModel
    method: str
    config: CalibrationConfig
    samples: int
    seqlen: int
    source: str  # the calibration text: a path or BUILTIN
    ids: torch.Tensor  # (samples, seqlen)
    targets: list[str]  # checkpoint names of the weights the method changes (all inside layers)
    linears: dict[int, list[str]]  # layer -> names of its linears (inside the layer)
    store: torch.device  # where activations live
    notes: list[str] = field(default_factory=list)

    @property
    def batches(self) -> list[torch.Tensor]:
        b = self.config.batch_size
        return [self.ids[i : i + b] for i in range(0, self.ids.shape[0], b)]

    def memory_estimate(self) -> dict[str, int]:
        """Bytes the run holds at once: the largest layer in fp32, its statistics, activations in and out."""
        lm = self.lm
        layer = lm.layer_bytes()
        tokens = self.samples * self.seqlen
        act = tokens * lm.hidden_size * 4 * 2
        stats = 0
        targets = set(self.targets)
        for i, names in self.linears.items():
            shapes = {n: lm.ck.info(lm.ck_name(f"{lm.layers_path}.{i}.{n}.weight")).shape for n in names}
            watched = [n for n in names if lm.ck_name(f"{lm.layers_path}.{i}.{n}.weight") in targets]
            ins = sorted({shapes[n][1] for n in watched})  # linears reading one input share it (q/k/v, gate/up)
            if self.method in ("sparsegpt", "gptq"):
                s = sum(c * c * 4 for c in ins)
            elif self.method == "wanda":
                s = sum(c * 4 for c in ins)
            else:  # awq keeps every input row of the linears it scales
                s = tokens * sum(shapes[n][1] for n in names) * 4
            stats = max(stats, s)
        return {"layer": layer, "statistics": stats, "activations": act, "total": layer + stats + act}

    def describe(self) -> dict:
        """The plan as ``--dry-run`` prints it."""
        lm = self.lm
        per_layer = {}
        for i in range(lm.num_layers):
            per_layer[i] = [
                n for n in self.linears.get(i, []) if lm.ck_name(f"{lm.layers_path}.{i}.{n}.weight") in set(self.targets)
            ]
        first = per_layer.get(0, [])
        return {
            "method": self.method,
            "architecture": type(lm.model).__name__,
            "layers": lm.num_layers,
            "linears_per_layer": len(first),
            "linears": first,
            "targets": len(self.targets),
            "calibration": {
                "source": self.source,
                "samples": self.samples,
                "seqlen": self.seqlen,
                "tokens": self.samples * self.seqlen,
                "seed": self.config.seed,
                "batch_size": self.config.batch_size,
            },
            "device": str(lm.device),
            "activations_on": str(self.store),
            "memory": self.memory_estimate(),
            "notes": list(self.notes),
        }

    def stream(self, method: LayerMethod, progress: Progress = SILENT) -> LayerStream:
        return LayerStream(self.lm, self.batches, method, progress, self.store, description=self.method)

    def close(self) -> None:
        self.lm.close()


def plan_calibration(
    ck: Checkpoint,
    config: CalibrationConfig,
    method: str,
    targets: list[str],
    device: torch.device,
    strict: bool = False,
) -> CalibrationPlan:
    """Build the skeleton, tokenize and sample the calibration text, and keep the targets the engine can
    calibrate (linear weights inside the layers). With ``strict`` (the user chose the targets) any other target
    is an error; otherwise it is dropped with a note."""
    lm = LayerwiseModel.open(ck, device)
    if method == "awq" and lm.kind != "causal":
        raise SurgeonError(f"--method awq works on causal LMs; {ck.label} is an encoder", "use --method gptq")
    linears: dict[int, list[str]] = {}
    inside: set[str] = set()
    for i in range(lm.num_layers):
        names = [n for n, m in lm._originals[i].named_modules() if isinstance(m, nn.Linear)]
        linears[i] = names
        inside |= {lm.ck_name(f"{lm.layers_path}.{i}.{n}.weight") for n in names}
    kept = [t for t in targets if t in inside]
    outside = [t for t in targets if t not in inside]
    notes = []
    if outside:
        if strict:
            raise SurgeonError(
                f"--method {method} changes linear layers inside the model's {lm.num_layers} layers; "
                f"{outside[0]} is not one{f' (and {len(outside) - 1} more)' if len(outside) > 1 else ''}",
                "leave it out with --exclude/--ignore",
            )
        notes.append(f"{len(outside)} target(s) outside the layers left to the data-free path, e.g. {outside[0]}")
    if not kept:
        raise SurgeonError(f"no linear layer of {ck.label}'s layers is selected for --method {method}")
    samples, seqlen = config.resolved(method, lm.max_context)
    if config.file is not None:
        text, source = read_text(config.file), config.file
    else:
        text, source = builtin_text(), BUILTIN
    tok = load_tokenizer(ck.folder, ck.label)
    ids = tokenize(tok, text, special=False)
    if ids.numel() < samples * seqlen:
        notes.append(f"the calibration text has {ids.numel()} tokens, fewer than {samples} x {seqlen}: sequences overlap")
    batch = calibration_ids(ids, samples, seqlen, config.seed, source)
    plan = CalibrationPlan(ck, lm, method, config, samples, seqlen, source, batch, kept, linears, lm.device, notes)
    plan.store = _store_for(plan)
    return plan


def _store_for(plan: CalibrationPlan) -> torch.device:
    """Activations stay on the GPU when they fit in half of its free memory, else they wait on the CPU."""
    dev = plan.lm.device
    if dev.type != "cuda":
        return dev
    free, _ = torch.cuda.mem_get_info(dev)
    need = plan.memory_estimate()["activations"]
    if need > free // 2:
        plan.notes.append(f"activations ({fmt_bytes(need)}) kept on the CPU: they do not fit beside the layer on {dev}")
        return torch.device("cpu")
    return dev
