"""Models for ``intrinsic-dim``: the built-in architectures of Li et al., the toy, transformers checkpoints,
and a user module's model, each with how to rebuild theta_0 later (``source``) for ``expand-subspace``.

- ``fc``: input -> ``width`` x ``depth`` ReLU layers -> classes (64-200-200-10 on digits: D = 55,210).
- ``lenet``: conv 6 @5x5 -> max-pool -> conv 16 @5x5 -> max-pool -> 120 -> 84 -> classes (Li et al.'s LeNet;
  D = 44,426 on 28x28 MNIST). Convolutions are unpadded as in the paper when both image sides are at least
  16 pixels, padded by 2 otherwise so that 8x8 digits fit.
- Initialisation is He-normal weights (std sqrt(2 / fan_in)) and zero biases, drawn on the CPU from a torch
  Generator seeded with the init seed, layer by layer in module order.
- A checkpoint (safetensors + config.json) is built with transformers' Auto classes from its folder (never
  remote code): ``AutoModelForSequenceClassification`` for classification/regression on tokens or text,
  ``AutoModelForCausalLM`` for ``text:``. A new head (missing from the checkpoint) is initialised
  N(0, initializer_range) with zero biases from the init seed; any other missing tensor or a shape that does
  not match config.json stops the command.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from modelsurgeon.ops.core.errors import SurgeonError

TOY_D = 1000


class FC(nn.Module):
    def __init__(self, in_features: int, width: int, depth: int, n_out: int):
        super().__init__()
        dims = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], n_out)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)


class LeNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], n_out: int):
        super().__init__()
        c, h, w = input_shape
        pad = 0 if min(h, w) >= 16 else 2
        self.conv1 = nn.Conv2d(c, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad)
        h1, w1 = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
        h2, w2 = (h1 + 2 * pad - 4) // 2, (w1 + 2 * pad - 4) // 2
        if h2 < 1 or w2 < 1:
            raise SurgeonError(f"--arch lenet needs images of at least 8x8 pixels, got {h}x{w}")
        self.input_shape = input_shape
        self.fc1 = nn.Linear(16 * h2 * w2, 120)
        self.fc2 = nn.Linear(120, 84)
        self.out = nn.Linear(84, n_out)

    def forward(self, x):
        x = x.reshape(x.shape[0], *self.input_shape)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.out(torch.relu(self.fc2(x)))


class Toy(nn.Module):
    """Li et al. Sec. 2: the output is the 10 sums of 100 consecutive parameters."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(TOY_D))

    def forward(self):
        return self.theta.view(10, TOY_D // 10).sum(1)


def he_init(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


def toy_init(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.theta.copy_(torch.randn(TOY_D, generator=g))


@dataclass
class BuiltModel:
    module: nn.Module
    source: dict  # how expand-subspace rebuilds theta_0 (JSON-able)
    reinit: Callable[[int], None] | None = None  # seed -> re-initialise the seed-dependent tensors
    head: list[str] = field(default_factory=list)  # tensors that are not in the checkpoint
    checkpoint: object | None = None  # ops.io.checkpoint.Checkpoint, for aux files
    default_baseline_lr: float = 1e-3
    label: str = ""


def output_config(module: nn.Module, source: dict) -> dict:
    """config.json for an expanded checkpoint: transformers' own for a checkpoint, else the model's source."""
    if source["kind"] == "checkpoint":
        cfg = module.config
        cfg.architectures = [type(module).__name__]
        return cfg.to_dict()
    return {"modelsurgeon_model": source}


def model_for_task(task, cfg, model_spec: str | None = None, revision: str | None = None) -> BuiltModel:
    """The model whose intrinsic dimension is measured on ``task``: without MODEL the task's own (the toy's,
    a module's, a built-in ``--arch`` for features); with MODEL its checkpoint, built as the task reads it."""
    if model_spec is None:
        return task.builtin_model(cfg)
    from modelsurgeon.ops.io.checkpoint import open_checkpoint

    ck = open_checkpoint(model_spec, revision)
    try:
        return task.checkpoint_model(ck)
    except BaseException:
        ck.close()
        raise


def toy_model() -> BuiltModel:
    module = Toy()
    return BuiltModel(module, {"kind": "toy"}, lambda s: toy_init(module, s), label="toy")


# --------------------------------------------------------------------------------------------
# built-in architectures


def _arch_source(arch: str, width: int, depth: int, in_shape, n_out: int) -> dict:
    return {"kind": "arch", "arch": arch, "width": width, "depth": depth, "input_shape": list(in_shape), "n_out": n_out}


def build_arch(source: dict) -> nn.Module:
    arch, shape, n_out = source["arch"], tuple(source["input_shape"]), source["n_out"]
    if arch == "fc":
        return FC(math.prod(shape), source["width"], source["depth"], n_out)
    if arch == "lenet":
        return LeNet(_image_shape(shape), n_out)
    raise SurgeonError(f"unknown architecture {arch!r}")


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, *shape)  # type: ignore[return-value]
    n = math.prod(shape)
    s = math.isqrt(n)
    if s * s != n:
        raise SurgeonError(
            f"--arch lenet needs images: {n} features per example is not a square", "give X as (N, H, W) or (N, C, H, W)"
        )
    return (1, s, s)


ARCH_BUILDERS = {"fc": "fully connected, ReLU, --width x --depth", "lenet": "LeNet-5 (6, 16 convolutions, 120, 84)"}


def arch_model(cfg, in_shape: tuple[int, ...], n_out: int) -> BuiltModel:
    """The built-in ``cfg.arch`` for examples of ``in_shape`` and ``n_out`` outputs, He-initialised per seed."""
    if cfg.arch == "lenet":
        in_shape = _image_shape(tuple(in_shape))
    source = _arch_source(cfg.arch, cfg.width, cfg.depth, in_shape, n_out)
    module = build_arch(source)
    label = f"{cfg.arch} " + (
        f"{math.prod(in_shape)}-" + "-".join([str(cfg.width)] * cfg.depth) + f"-{n_out}"
        if cfg.arch == "fc"
        else f"on {tuple(in_shape)}"
    )
    return BuiltModel(module, source, lambda s: he_init(module, s), label=label)


# --------------------------------------------------------------------------------------------
# transformers checkpoints


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints load reports and progress bars; keep stdout for the result."""
    try:
        import transformers
    except ImportError:
        raise SurgeonError(
            "a checkpoint MODEL is built with transformers, which is not installed", "run: pip install transformers"
        ) from None

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    with contextlib.redirect_stdout(sys.stderr):
        yield transformers


def load_transformers(ck, auto_class: str, kwargs: dict | None = None) -> BuiltModel:
    """MODEL's checkpoint built with transformers' ``auto_class`` (never remote code); a new head (missing
    from the checkpoint) is re-initialised per seed, any other mismatch with config.json stops the command."""
    if ck.config is None:
        raise SurgeonError(f"{ck.label} has no config.json", "intrinsic-dim builds the model from config.json + safetensors")
    kwargs = dict(kwargs or {})
    with _quiet_transformers() as transformers:
        cls = getattr(transformers, auto_class)
        try:
            module, info = cls.from_pretrained(
                str(ck.folder),
                output_loading_info=True,
                local_files_only=True,
                trust_remote_code=False,
                dtype=torch.float32,
                **kwargs,
            )
        except (ValueError, RuntimeError, OSError, KeyError, TypeError) as e:
            msg = " ".join(str(e).split())
            if "mismatch" not in msg.lower():
                raise SurgeonError(f"cannot build a model from {ck.label}'s config.json with {auto_class}: {msg[:300]}") from None
            try:  # load again, tolerating the mismatch, only to name the tensor
                module, info = cls.from_pretrained(
                    str(ck.folder),
                    output_loading_info=True,
                    local_files_only=True,
                    trust_remote_code=False,
                    dtype=torch.float32,
                    ignore_mismatched_sizes=True,
                    **kwargs,
                )
            except Exception:
                raise SurgeonError(
                    f"{ck.label}'s tensors do not match its config.json: {msg[:300]}", "fix config.json or the weights"
                ) from None
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0]
        what = (
            f"{first[0]} is {list(first[1])} in the weights but {list(first[2])} by config.json"
            if isinstance(first, tuple) and len(first) == 3
            else str(first)
        )
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise SurgeonError(f"{ck.label}'s tensors do not match its config.json: {what}{more}", "fix config.json or the weights")
    missing = sorted(info.get("missing_keys") or [])
    prefix = getattr(module, "base_model_prefix", "")
    head_prefixes = tuple(n + "." for n, _ in module.named_children() if n != prefix)
    not_head = [m for m in missing if not m.startswith(head_prefixes)]
    if auto_class == "AutoModelForCausalLM":
        not_head = missing  # a causal LM's head is part of the checkpoint (or tied to the embeddings)
    if not_head:
        more = f" and {len(not_head) - 3} more" if len(not_head) > 3 else ""
        raise SurgeonError(
            f"{ck.label}'s tensors do not match its config.json: missing {', '.join(not_head[:3])}{more}",
            "the weights are for another architecture or size",
        )
    module.float()
    init_range = float(getattr(module.config, "initializer_range", 0.02) or 0.02)
    params = dict(module.named_parameters())
    head = [m for m in missing if m in params]

    def reinit(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in head:
                p = params[name]
                if name.endswith("bias") or p.ndim == 1:
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * init_range)

    source = {
        "kind": "checkpoint",
        "label": ck.label,
        "path": str(ck.folder.resolve()),
        "files": {f.name: sha256_file(f) for f in ck.weight_files},
        "auto_class": auto_class,
        "kwargs": kwargs,
    }
    return BuiltModel(module, source, reinit, head=head, checkpoint=ck, default_baseline_lr=1e-4, label=ck.label)


def load_tokenizer(ck):
    with _quiet_transformers() as transformers:
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(ck.folder), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise SurgeonError(
                f"{ck.label} has no usable tokenizer ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                "put tokenizer.json (or the tokenizer files) next to config.json",
            ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# a user's module, optionally with a checkpoint's weights


def module_model(module: nn.Module, spec: str, ck=None) -> BuiltModel:
    """A ``module:function`` task's model; with MODEL's checkpoint ``ck`` its tensors become theta_0."""
    if ck is None:
        return BuiltModel(module, {"kind": "module", "task": spec}, None, label=f"model from {spec}")
    load_state_strict(module, ck)
    source = {
        "kind": "module",
        "task": spec,
        "checkpoint": {
            "label": ck.label,
            "path": str(ck.folder.resolve()),
            "files": {f.name: sha256_file(f) for f in ck.weight_files},
        },
    }
    return BuiltModel(module, source, None, checkpoint=ck, default_baseline_lr=1e-4, label=f"{ck.label} in {spec}")


def load_state_strict(module: nn.Module, ck) -> None:
    own = module.state_dict()
    names = set(ck.names())
    missing = [n for n in own if n not in names]
    extra = [n for n in names if n not in own]
    shape = [n for n in own if n in names and tuple(ck.info(n).shape) != tuple(own[n].shape)]
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}")
        if shape:
            n = shape[0]
            parts.append(f"{n} is {list(ck.info(n).shape)} in the checkpoint but {list(own[n].shape)} in the model")
        raise SurgeonError(f"{ck.label}'s tensors do not match the model: {'; '.join(parts)}")
    with torch.no_grad():
        for n, t in own.items():
            t.copy_(ck.get(n).to(t.dtype))
