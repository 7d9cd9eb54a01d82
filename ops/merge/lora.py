"""LoRA adapters (PEFT format): fold one into its base, tensor by tensor.

Fold: ``LoraCheckpoint(base, adapter)`` looks like the base checkpoint, but ``get(name)`` returns
W + scaling * B @ A for the adapted weights (transposed for fan_in_fan_out, (B @ A)^T for embeddings,
DoRA's magnitude rescale, lora biases, and modules_to_save replacements), so folding streams exactly like
any other read: one tensor in memory at a time, never the whole model (mergekit and PEFT load it all).
scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; rank_pattern / alpha_pattern override
r and alpha per module with PEFT's rule (the first key K with ``(.*\\.)?(K)$`` matching the module name).

Extraction, the reverse (a fine-tune and its base to an adapter), is ``extract.py``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import CheckpointError, PlanError
from modelsurgeon.ops.core.patterns import UserPattern
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint

PREFIX = "base_model.model."
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B|lora_magnitude_vector(?:\.weight)?)$"
)


def pattern_value(patterns: dict, module: str, default):
    """PEFT's get_pattern_key: the first key K such that ``(.*\\.)?(K)$`` matches the module name."""
    for key, value in (patterns or {}).items():
        if UserPattern(rf"(.*\.)?({key})$", "adapter_config.json pattern key", usage=False).match(module):
            return value
    return default


@dataclass
class LoraModule:
    module: str  # module path in the base model (PEFT prefix removed)
    weight: str  # the base tensor it changes
    kind: str  # "linear" | "embedding"
    a: str
    b: str
    r: int
    scaling: float
    magnitude: str | None = None  # DoRA
    bias: str | None = None  # lora_B.bias -> base bias
    bias_target: str | None = None


@dataclass
class Adapter:
    """An opened PEFT LoRA adapter folder."""

    label: str
    folder: Path
    config: dict
    ck: Checkpoint
    modules: dict[str, LoraModule] = field(default_factory=dict)  # by base weight name
    full: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter tensor (modules_to_save, bias)
    problems: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.ck.close()


def resolve_adapter(spec: str) -> Path:
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.name == "adapter_config.json":
        return p.parent
    if p.exists():
        raise CheckpointError(f"LoRA adapter {spec} is not a folder", "give the folder holding adapter_config.json")
    from modelsurgeon.ops.io.checkpoint import HUB_ID

    if HUB_ID.match(spec) and not spec.startswith((".", "/")):
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import snapshot_download

        repo, _, rev = spec.partition("@")
        try:
            return Path(snapshot_download(repo, revision=rev or None, allow_patterns=["adapter_config.json", *ADAPTER_FILES]))
        except hf_errors.RepositoryNotFoundError:
            raise CheckpointError(
                f"LoRA adapter {spec} was not found on the Hub (or is private)", "check the name, or set HF_TOKEN"
            ) from None
        except (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError, FileNotFoundError) as e:
            raise CheckpointError(f"could not download LoRA adapter {spec}: {e}") from None
    raise CheckpointError(
        f"LoRA adapter {spec} does not exist", "give a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)"
    )


def open_adapter(spec: str) -> Adapter:
    folder = resolve_adapter(spec)
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"LoRA adapter {spec} has no adapter_config.json", "give a PEFT adapter folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path} is not a JSON object")
    weights = next((folder / f for f in ADAPTER_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"LoRA adapter {spec} has no adapter_model.safetensors", "give a PEFT adapter folder")
    return Adapter(spec, folder, config, open_checkpoint(weights))


def bind_adapter(adapter: Adapter, base: Checkpoint) -> list[str]:
    """Match every adapter tensor to the base tensor it changes; return every problem found."""
    cfg = adapter.config
    problems = Problems(f"the LoRA adapter {adapter.label}")
    where = f"LoRA adapter {adapter.label}"
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return [f"{where} is a {peft_type} adapter; only LoRA adapters can be folded"]
    r0, alpha0 = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r0, int) or r0 <= 0 or not isinstance(alpha0, (int, float)):
        return [f"{where}: adapter_config.json needs a positive integer r and a number lora_alpha"]
    rslora, fifo = bool(cfg.get("use_rslora")), bool(cfg.get("fan_in_fan_out"))
    if fifo and cfg.get("use_dora"):
        problems.add(f"{where}: DoRA with fan_in_fan_out is not supported")
    groups: dict[str, dict[str, str]] = {}
    for name in adapter.ck.names():
        key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
        m = _KEY.match(key)
        if m:
            groups.setdefault(m["module"], {})[m["part"].split(".")[0] + ("_bias" if m["part"] == "lora_B.bias" else "")] = name
        else:  # a whole tensor: modules_to_save, or a bias saved with bias="all"/"lora_only"
            target = _base_name(base, key)
            if target is None:
                problems.add(f"{where}: tensor {name} has no counterpart {key!r} in the base {base.label}")
            elif base.info(target).shape != adapter.ck.info(name).shape:
                problems.add(
                    f"{where}: {name} has shape {list(adapter.ck.info(name).shape)} but the base's {target} has {list(base.info(target).shape)}"
                )
            else:
                adapter.full[target] = name
    for module, parts in groups.items():
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a, b = (
            (parts.get("lora_embedding_A"), parts.get("lora_embedding_B")) if emb else (parts.get("lora_A"), parts.get("lora_B"))
        )
        if a is None or b is None:
            problems.add(f"{where}: module {module} has only one of its two LoRA factors")
            continue
        weight = _base_name(base, module + ".weight")
        if weight is None:
            problems.add(f"{where} targets {module}, but the base {base.label} has no tensor {module}.weight")
            continue
        r = int(pattern_value(cfg.get("rank_pattern"), module, r0))
        alpha = float(pattern_value(cfg.get("alpha_pattern"), module, alpha0))
        A, B, W = adapter.ck.info(a).shape, adapter.ck.info(b).shape, base.info(weight).shape
        if len(A) != 2 or len(B) != 2:
            problems.add(f"{where}: {module} has {len(A)}-D LoRA factors (convolution LoRA is not supported)")
            continue
        if emb:
            want = (W[0], W[1]) if len(W) == 2 else None
            got = (A[1], B[0])
        else:
            want = (tuple(W[::-1]) if fifo else tuple(W)) if len(W) == 2 else None
            got = (B[0], A[1])
        if want is None or got != want or A[0] != B[1]:
            problems.add(f"{where}: {module} factors A{list(A)} B{list(B)} do not fit the base's {weight} {list(W)}")
            continue
        if A[0] != r:
            problems.add(f"{where}: {module} has rank {A[0]} but adapter_config.json says r={r}")
            continue
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        lm = LoraModule(module, weight, "embedding" if emb else "linear", a, b, r, scaling)
        if "lora_magnitude_vector" in parts:
            lm.magnitude = parts["lora_magnitude_vector"]
            if emb:
                problems.add(f"{where}: DoRA on the embedding {module} is not supported")
        if "lora_B_bias" in parts:
            bt = _base_name(base, module + ".bias")
            if bt is None:
                problems.add(f"{where}: {module} has a lora bias but the base has no {module}.bias")
            lm.bias, lm.bias_target = parts["lora_B_bias"], bt
        adapter.modules[weight] = lm
    if not adapter.modules and not adapter.full and not problems:
        problems.add(f"{where} holds no LoRA tensors")
    adapter.problems = problems.lines()
    return adapter.problems


def _base_name(base: Checkpoint, name: str) -> str | None:
    """The base tensor an adapter key refers to (tolerating a missing or extra ``model.`` prefix)."""
    for cand in (name, name.removeprefix("model."), "model." + name):
        if cand in base:
            return cand
    return None


class LoraCheckpoint:
    """A base checkpoint seen with a LoRA adapter folded in; reads stay one tensor at a time."""

    def __init__(self, base: Checkpoint, adapter: Adapter):
        self.base = base
        self.adapter = adapter
        self.label = f"{base.label}+{adapter.label}"
        self._bias_of = {m.bias_target: m for m in adapter.modules.values() if m.bias_target}

    def __getattr__(self, item):  # names, infos, info, config, folder, aux_files, tied_aliases, kind ...
        return getattr(self.base, item)

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def __len__(self) -> int:
        return len(self.base)

    def changed(self, name: str) -> bool:
        return name in self.adapter.modules or name in self.adapter.full or name in self._bias_of

    def get(self, name: str) -> torch.Tensor:
        """The folded tensor in float32 when the adapter changes it, else the base's own."""
        if name in self.adapter.full:
            return self.adapter.ck.get(self.adapter.full[name])
        w = self.base.get(name)
        if name in self._bias_of:
            m = self._bias_of[name]
            return w.float().add_(self.adapter.ck.get(m.bias).float(), alpha=m.scaling)
        m = self.adapter.modules.get(name)
        if m is None:
            return w
        return fold(
            w,
            self.adapter.ck.get(m.a),
            self.adapter.ck.get(m.b),
            m.scaling,
            m.kind,
            bool(self.adapter.config.get("fan_in_fan_out")),
            None if m.magnitude is None else self.adapter.ck.get(m.magnitude),
        )

    def iter_tensors(self, names=None, prefetch: bool = True):
        from modelsurgeon.ops.core.streaming import prefetched

        names = list(self.base.names() if names is None else names)
        it = ((n, self.get(n)) for n in names)
        return prefetched(it, depth=1) if prefetch else it

    def input_paths(self) -> list[Path]:
        return [*self.base.input_paths(), self.adapter.folder, *self.adapter.ck.input_paths()]

    def close(self) -> None:
        self.adapter.close()
        self.base.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def delta_weight(a: torch.Tensor, b: torch.Tensor, scaling: float, kind: str, fan_in_fan_out: bool) -> torch.Tensor:
    """scaling * B @ A in float32, laid out like the base weight."""
    d = b.float() @ a.float()
    if kind == "embedding" or fan_in_fan_out:
        d = d.T
    return d.mul_(scaling)


def fold(w, a, b, scaling, kind="linear", fan_in_fan_out=False, magnitude=None) -> torch.Tensor:
    """W + scaling * B @ A (float32); with DoRA, rescaled so each output row's norm is the magnitude."""
    out = w.float() + delta_weight(a, b, scaling, kind, fan_in_fan_out)
    if magnitude is not None:
        norm = torch.linalg.vector_norm(out, dim=1)
        out.mul_((magnitude.float() / norm).unsqueeze(1))
    return out


def open_with_adapter(model_spec: str, adapter_spec: str, revision: str | None = None) -> LoraCheckpoint:
    """Open ``model+adapter``; raise a PlanError listing every mismatch between them."""
    base = open_checkpoint(model_spec, revision)
    try:
        adapter = open_adapter(adapter_spec)
    except BaseException:
        base.close()
        raise
    problems = bind_adapter(adapter, base)
    if problems:
        adapter.close()
        base.close()
        raise PlanError(problems, f"the LoRA adapter {adapter_spec}")
    return LoraCheckpoint(base, adapter)
