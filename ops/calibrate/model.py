"""A model one decoder (or encoder) layer at a time: the architecture from config.json, weights from the lazy reader.

    with LayerwiseModel.open(ck, device) as lm:          # the skeleton: every parameter empty, no weight read
        x, kw = lm.embed(input_ids)                       # layer 0's input and the call arguments of every layer
        with lm.layer(i) as layer:                        # layer i's weights read from the checkpoint onto the device
            y = lm.call(layer, i, x, kw)                  # ... exactly as the full model would call it
        logits = lm.head(input_ids, y)                    # the final norm and the LM head on the last layer's output

The architecture is built by transformers from config.json (``trust_remote_code`` is never set; a
``model_type`` transformers does not know is an error). It is built under ``no_init_weights``: every parameter is
allocated but never written, so its pages are never resident; then every layer's parameters are released, and
only the modules outside the layers (embeddings, final norm, head, rotary tables) are loaded, so memory follows
one layer. Their non-persistent buffers (rotary frequencies, position ids) come from the constructor, as in a
normal load.

How the layers are called is not re-implemented: every layer is replaced by a *slot* that the model's own
forward calls with whatever arguments that architecture passes (masks, position embeddings, per-layer-type
masks); a slot records them (``embed``), or hands back a hidden state the engine computed (``head``). So the
layer-by-layer run is the model's own code, and a test checks it against a full forward.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.io.checkpoint import Checkpoint

from .memory import layer_sized_blocks_unmapped

# model types whose layer calls are known to work here (tests build each one); others are tried and may fail
TESTED_CAUSAL = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
TESTED_ENCODERS = ("bert",)
_CAUSAL_ARCH = re.compile(r"(ForCausalLM|LMHeadModel)$")


class _Stop(Exception):
    """Raised by the last slot to end a capturing forward (nothing after the layers is needed)."""


class _Slot(nn.Module):
    """Stands in for layer ``index`` inside the model's forward. Capture mode: record the call's extra
    arguments (and layer 0's input) and pass the input on; inject mode: the last slot returns the hidden
    state it was given."""

    def __init__(self, owner: LayerwiseModel, index: int, original: nn.Module):
        super().__init__()
        self.index = index
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_original", original)

    def __getattr__(self, name):  # the model's loop may read layer attributes (attention_type, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, hidden_states, *args, **kwargs):
        owner = self._owner
        if owner._mode == "capture":
            if self.index == 0:
                owner._captured_input = hidden_states
            owner._captured_calls[self.index] = (args, kwargs)
            if self.index == owner.num_layers - 1:
                raise _Stop
            return hidden_states
        if self.index == owner.num_layers - 1:
            return owner._inject
        return hidden_states


@dataclass
class LayerCall:
    """The arguments the model passes to every layer for one input shape (beyond the hidden states)."""

    calls: list[tuple[tuple, dict]] = field(default_factory=list)

    def args(self, i: int) -> tuple[tuple, dict]:
        return self.calls[i]


def _config_of(ck: Checkpoint):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = ck.config
    if not cfg:
        raise SurgeonError(
            f"{ck.label} has no config.json, which calibrated methods and eval need to build the model",
            "give the model folder with its config.json",
        )
    mt = cfg.get("model_type")
    if mt not in CONFIG_MAPPING:
        raise SurgeonError(
            f"transformers does not know model_type {mt!r} of {ck.label} (and remote code is never run)",
            f"calibrated methods and eval work with architectures transformers ships, e.g. {', '.join(TESTED_CAUSAL + TESTED_ENCODERS)}",
        )
    data = dict(cfg)
    data.pop("quantization_config", None)
    data.pop("auto_map", None)
    return AutoConfig.for_model(**data)


def model_kind(config) -> str:
    """ "causal" (a decoder LM with a head) or "encoder" (a bare encoder, e.g. BERT / sentence-transformers)."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(_CAUSAL_ARCH.search(a) for a in archs):
        return "causal"
    if getattr(config, "is_encoder_decoder", False):
        return "unsupported"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    if config.model_type in TESTED_ENCODERS or (archs and all(a.endswith("Model") for a in archs)):
        return "encoder" if config.model_type in MODEL_MAPPING_NAMES else "unsupported"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    return "unsupported"


def _unwalkable(label: str, why: str) -> SurgeonError:
    return SurgeonError(
        f"{label}: {why}",
        f"calibrated methods and eval walk causal LMs ({', '.join(TESTED_CAUSAL)} are tested) and BERT-style encoders",
    )


class LayerwiseModel:
    """The skeleton of a checkpoint's model with one layer loaded at a time (see the module docstring)."""

    def __init__(self, ck: Checkpoint, device: torch.device, dtype: torch.dtype = torch.float32):
        layer_sized_blocks_unmapped()
        self.ck, self.device, self.dtype = ck, torch.device(device), dtype
        self.config = _config_of(ck)
        self.kind = model_kind(self.config)
        if self.kind == "unsupported":
            arch = ", ".join(getattr(self.config, "architectures", None) or []) or self.config.model_type
            raise _unwalkable(ck.label, f"{arch} is neither a causal LM nor an encoder")
        self._mode = "capture"
        self._captured_input: torch.Tensor | None = None
        self._captured_calls: dict[int, tuple[tuple, dict]] = {}
        self._inject: torch.Tensor | None = None
        self._build()

    # --- building
    def _build(self) -> None:
        from transformers import AutoModel, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        cls = AutoModelForCausalLM if self.kind == "causal" else AutoModel
        try:
            with no_init_weights(), warnings_off():
                model = cls.from_config(self.config, dtype=torch.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise _unwalkable(
                self.ck.label, f"transformers cannot build {self.config.model_type}: {str(e).splitlines()[0]}"
            ) from None
        model.eval()
        self.model = model
        n = int(getattr(self.config, "num_hidden_layers", 0) or 0)
        self.layers_path, layers = self._find_layers(model, n)
        self.num_layers = n
        self._originals = list(layers)
        self._buffers: list[dict[str, torch.Tensor]] = []
        for layer in self._originals:
            persistent = set(layer.state_dict())
            self._buffers.append({k: b.detach().clone() for k, b in layer.named_buffers() if k not in persistent})
            layer.to_empty(device="meta")  # releases the (never touched) parameters
            layer.requires_grad_(False)
        for i in range(n):
            layers[i] = _Slot(self, i, self._originals[i])
        self._names = self._map_names()
        self._load_outer()
        self.model.to(self.device)
        self.model.requires_grad_(False)

    @staticmethod
    def _find_layers(model: nn.Module, n: int) -> tuple[str, nn.ModuleList]:
        found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n and n > 0]
        if len(found) != 1:
            raise _unwalkable(
                type(model).__name__,
                f"found {len(found)} lists of {n} layers (num_hidden_layers); the engine needs exactly one",
            )
        return found[0]

    def _map_names(self) -> dict[str, str]:
        """Model state-dict name -> checkpoint name (checkpoints saved from the bare model lack the head's prefix)."""
        model_names = list(self.model.state_dict())
        ck_names = set(self.ck.names())
        prefix = getattr(self.model, "base_model_prefix", "") or ""
        candidates = [lambda k: k]
        if prefix:
            candidates += [lambda k: k[len(prefix) + 1 :] if k.startswith(prefix + ".") else k, lambda k: f"{prefix}.{k}"]
        layer0 = [f"{self.layers_path}.0.{k}" for k in self._originals[0].state_dict()]
        best = max(candidates, key=lambda f: sum(f(k) in ck_names for k in layer0))
        self._name_fn = best
        if not any(best(k) in ck_names for k in layer0):
            raise SurgeonError(
                f"{self.ck.label}: the checkpoint's tensor names do not match {type(self.model).__name__} "
                f"(e.g. {layer0[0]} is missing)",
                "the checkpoint must be saved by transformers for the architecture its config.json names",
            )
        return {k: best(k) for k in model_names}

    def ck_name(self, model_name: str) -> str:
        return self._name_fn(model_name)

    def layer_names(self, i: int) -> list[tuple[str, str]]:
        """(name inside the layer, checkpoint name) of layer i's tensors, in the layer's order."""
        return [(k, self.ck_name(f"{self.layers_path}.{i}.{k}")) for k in self._originals[i].state_dict()]

    def outer_names(self) -> list[str]:
        """Checkpoint names of the tensors outside the layers (embeddings, final norm, head, ...)."""
        inside = {n for i in range(self.num_layers) for _, n in self.layer_names(i)}
        return [n for n in self.ck.names() if n not in inside]

    def _load_outer(self) -> None:
        sd = self.model.state_dict()
        aliases = self.ck.tied_aliases()
        missing = []
        with torch.no_grad():
            for name, t in sd.items():
                if name.startswith(self.layers_path + "."):
                    continue
                src = self.ck_name(name)
                if src not in self.ck:
                    src = aliases.get(src, src)
                if src not in self.ck:
                    if self._tied_to_loaded(name):
                        continue
                    missing.append(src)
                    continue
                w = self.ck.get(src)
                if tuple(w.shape) != tuple(t.shape):
                    raise SurgeonError(f"{self.ck.label}: {src} is {list(w.shape)} but the model expects {list(t.shape)}")
                t.copy_(w)  # copy_ converts: no fp32 temporary of the embeddings
        if missing:
            raise SurgeonError(f"{self.ck.label} lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]}")
        if hasattr(self.model, "tie_weights") and getattr(self.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def _tied_to_loaded(self, name: str) -> bool:
        """An LM head tied to the embeddings is their parameter: loading the embeddings (and tying) loads it."""
        if not getattr(self.config, "tie_word_embeddings", False) or not hasattr(self.model, "get_output_embeddings"):
            return False
        head = self.model.get_output_embeddings()
        if head is None:
            return False
        return any(m is head and name == f"{n}.weight" for n, m in self.model.named_modules())

    @classmethod
    def open(cls, ck: Checkpoint, device: torch.device | str = "cpu") -> LayerwiseModel:
        return cls(ck, torch.device(device))

    def __enter__(self) -> LayerwiseModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

    # --- running
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerCall]:
        """Layer 0's input for ``input_ids`` and the arguments the model passes to every layer."""
        self._mode = "capture"
        self._captured_calls = {}
        kwargs = {"use_cache": False} if self.kind == "causal" else {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        with torch.no_grad(), contextlib.suppress(_Stop):
            self._body()(input_ids=input_ids.to(self.device), **kwargs)
        x = self._captured_input
        self._captured_input = None
        if x is None or len(self._captured_calls) != self.num_layers:
            raise _unwalkable(self.ck.label, "the model's forward did not call every layer in order")
        return x, LayerCall([self._captured_calls[i] for i in range(self.num_layers)])

    def _body(self) -> nn.Module:
        """What is called for hidden states: the bare model under a causal LM's head, or the encoder itself."""
        if self.kind == "causal":
            return getattr(self.model, self.model.base_model_prefix, self.model)
        return self.model

    def call(self, layer: nn.Module, i: int, x: torch.Tensor, kw: LayerCall) -> torch.Tensor:
        args, kwargs = kw.args(i)
        out = layer(x, *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def finish(self, input_ids: torch.Tensor, last: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """The model's output after its last layer returned ``last``: logits for a causal LM (final norm, head,
        soft-capping as the model applies them), the last hidden state for an encoder."""
        self._mode = "inject"
        self._inject = last
        try:
            kwargs = {"use_cache": False} if self.kind == "causal" else {}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask.to(self.device)
            with torch.no_grad():
                out = self.model(input_ids=input_ids.to(self.device), **kwargs)
        finally:
            self._inject = None
            self._mode = "capture"
        return out.logits if self.kind == "causal" else out.last_hidden_state

    @contextlib.contextmanager
    def layer(self, i: int) -> Iterator[nn.Module]:
        """Layer i with its weights read from the checkpoint (in the compute dtype, on the device); released after."""
        layer = self._originals[i]
        layer.to_empty(device=self.device)
        try:
            self.load_layer(i, layer)
            yield layer
        finally:
            layer.to_empty(device="meta")

    def load_layer(self, i: int, layer: nn.Module) -> None:
        sd = layer.state_dict()
        with torch.no_grad():
            for local, src in self.layer_names(i):
                if src not in self.ck:
                    raise SurgeonError(f"{self.ck.label} lacks {src}, a tensor of layer {i}")
                w = self.ck.get(src)
                t = sd[local]
                if tuple(w.shape) != tuple(t.shape):
                    raise SurgeonError(f"{self.ck.label}: {src} is {list(w.shape)} but the model expects {list(t.shape)}")
                t.copy_(w)  # copy_ converts dtype and device: no second full-size temporary
            for k, b in self._buffers[i].items():
                mod, _, leaf = k.rpartition(".")
                owner = layer.get_submodule(mod) if mod else layer
                owner._buffers[leaf] = b.to(self.device)

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The layer's linear modules by their name inside the layer."""
        return {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def max_context(self) -> int:
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(self.config, key, None)
            if isinstance(v, int) and v > 0:
                return v
        return 2048

    def layer_bytes(self) -> int:
        """Bytes of one layer in the compute dtype (the largest layer)."""
        best = 0
        for i in range(self.num_layers):
            n = sum(self.ck.info(src).numel for _, src in self.layer_names(i) if src in self.ck)
            best = max(best, n)
        return best * torch.empty((), dtype=self.dtype).element_size()


@contextlib.contextmanager
def warnings_off():
    import warnings

    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(before)
