"""Mixture-of-experts assembly (mergekit-moe's recipes): a Mixtral- or Qwen-MoE-shaped checkpoint from a
dense base and dense fine-tunes.

    cfg = MoEConfig.from_recipe(yaml.safe_load(text), "moe.yml")
    with plan_moe(cfg, Output.of("moe/")) as plan:     # every model opened (headers) and checked
        result = run_moe(plan, progress)                # gates, then one tensor at a time

The output keeps the base's embeddings, attention and norms; in every layer each expert model's MLP
(gate/up/down projections) becomes one expert (``noise_scale`` adds Gaussian noise, ``residual_scale``
scales its down projection), and the router (``gate``) has one row per expert:

- ``hidden`` / ``hidden_last`` (mergekit's default) and ``hidden_avg``: the base's hidden state entering
  each layer for every positive prompt (its last token, or the mean over its tokens), averaged over the
  prompts, minus the same for the negative prompts, normalised. Each prompt is its own batch, so no
  padding enters the average (mergekit pads the batch and takes the last position, a pad token for
  shorter prompts). The hidden states come from ``plan.layer_inputs`` when the caller gives one (the API
  and the CLI pass the calibration engine's layer-at-a-time walk, ``modelsurgeon.api``, so memory holds
  the embeddings, the head and one layer); without it the base runs whole in transformers;
- ``cheap_embed``: the normalised sum of the prompts' token embeddings (the same for every layer), one
  row of the embedding read at a time;
- ``random`` / ``uniform_random``: Gaussian, or uniform in +/- 1/sqrt(hidden) (nn.Linear's init), from
  ``seed``.

Qwen MoE adds one shared expert with its gate (``shared_expert_gate``, one row from its prompts) and zero
attention biases when the base has none. Tensors are written in the per-expert layout
(``block_sparse_moe.experts.N.w1`` for Mixtral, ``mlp.experts.N.gate_proj`` for Qwen MoE), which
transformers 4 and 5 and llama.cpp's converter read; peak memory is the largest tensor (one expert's
projection), not the model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads, prefetched
from modelsurgeon.ops.io.checkpoint import TOKENIZER_FILES
from modelsurgeon.ops.io.output import Output, write_folder
from modelsurgeon.ops.io.writer import TensorSpec
from modelsurgeon.recipes.merge import ModelRef, MoEConfig, MoEExpert

MLP = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


@dataclass
class MoEResult(Result):
    """What ``surgeon merge MOE.yaml --json`` prints."""

    architecture: str
    base: str
    experts: list[str]
    shared_experts: list[str]
    gate_mode: str
    experts_per_token: int
    layers: int
    tensors: int
    output_bytes: int
    dry_run: bool
    output: str | None
    files: list[str] | None = None
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.dry_run:
            out.pop("files")
            out.pop("seconds")
        else:
            out["seconds"] = round(self.seconds or 0.0, 3)
        return out


@dataclass
class MoEPlan:
    config: MoEConfig
    base: Any  # Checkpoint
    experts: list[Any]  # one checkpoint per expert (the same object for repeated models)
    shared: list[Any]
    layers: int
    hidden: int
    specs: list[TensorSpec]
    sources: list[
        tuple
    ]  # per spec: ("copy", ck, name) | ("expert", ck, name, MoEExpert, residual) | ("gate", layer, row) | ("zeros",)
    out_config: dict
    dtype: torch.dtype
    output: Output | None
    device: torch.device
    warnings: list[str] = field(default_factory=list)
    # (base checkpoint, token-id batches, device) -> yields (layer, the layer's input for each batch): the
    # hidden states entering each layer without holding the model (families do not import each other, so
    # the API passes the calibration engine's walk in); None: the base runs whole in transformers
    layer_inputs: Callable[[Any, list[torch.Tensor], torch.device], Iterator[tuple[int, list[torch.Tensor]]]] | None = None

    def result(self, output: str | None = None) -> MoEResult:
        c = self.config
        if output is None and self.output is not None:
            output = str(self.output.path)
        return MoEResult(
            c.architecture,
            c.base_model,
            [e.source_model for e in c.experts],
            [e.source_model for e in c.shared_experts],
            c.gate_mode,
            c.experts_per_token,
            self.layers,
            len(self.specs),
            sum(s.nbytes for s in self.specs),
            True,
            output,
            warnings=list(self.warnings),
        )

    def close(self) -> None:
        seen = set()
        for ck in [self.base, *self.experts, *self.shared]:
            if id(ck) not in seen:
                seen.add(id(ck))
                ck.close()

    def __enter__(self) -> MoEPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(spec: str):
    from .plan import open_model

    return open_model(ModelRef.parse(spec))


def plan_moe(config: MoEConfig, output: Output | None = None, *, layer_inputs=None) -> MoEPlan:
    """Open the base and every expert (headers only) and check that their MLPs line up; PlanError lists all.
    ``layer_inputs``: how ``hidden`` routers get the base's hidden states (``MoEPlan.layer_inputs``)."""
    device = resolve_device(config.device)
    if output is not None:
        output.check()
    problems = Problems("the MoE")
    opened: dict[str, Any] = {}
    for spec in [config.base_model] + [e.source_model for e in config.experts + config.shared_experts]:
        if spec in opened:
            continue
        try:
            opened[spec] = _open(spec)
        except PlanError as e:
            problems.extend(e.problems)
        except SurgeonError as e:
            problems.add(f"{spec}: {e}")
    try:
        if problems:
            raise PlanError(problems.lines(), problems.what)
        base = opened[config.base_model]
        experts = [opened[e.source_model] for e in config.experts]
        shared = [opened[e.source_model] for e in config.shared_experts]
        cfg = base.config or {}
        types = {spec: (ck.config or {}).get("model_type") for spec, ck in opened.items()}
        allowed = ("llama", "mistral") if config.architecture == "mixtral" else ("llama", "mistral", "qwen2")
        if len(set(types.values())) != 1 or next(iter(types.values())) not in allowed:
            problems.add(
                f"{'Mixtral' if config.architecture == 'mixtral' else 'Qwen MoE'} needs models of one architecture among "
                f"{', '.join(allowed)}; got " + ", ".join(f"{k} ({v})" for k, v in types.items())
            )
        layers, hidden = cfg.get("num_hidden_layers"), cfg.get("hidden_size")
        if not isinstance(layers, int) or not isinstance(hidden, int):
            problems.add(f"{config.base_model}: config.json needs num_hidden_layers and hidden_size")
        if problems:
            raise PlanError(problems.lines(), problems.what)
        for spec, ck in opened.items():
            for i in range(layers):
                for p in MLP:
                    n = f"model.layers.{i}.mlp.{p}.weight"
                    if n not in ck:
                        problems.add(f"{spec} has no tensor {n}")
                    elif n in base and ck.info(n).shape != base.info(n).shape:
                        problems.add(f"{spec}: {n} has shape {list(ck.info(n).shape)}, the base's is {list(base.info(n).shape)}")
        if config.gate_mode == "cheap_embed" and "model.embed_tokens.weight" not in base:
            problems.add(f"gate_mode cheap_embed reads model.embed_tokens.weight, which {config.base_model} lacks")
        if problems:
            raise PlanError(problems.lines(), problems.what)
        dtype = getattr(torch, config.dtype) if config.dtype else None
        specs, sources = _layout(config, base, experts, shared, layers, dtype)
        out_dtype = dtype or next((s.dtype for s in specs if s.dtype.is_floating_point), torch.float32)
        warnings = []
        n = len(config.experts)
        if n & (n - 1):
            warnings.append(f"{n} experts is not a power of two: llama.cpp cannot run this model")
        return MoEPlan(
            config,
            base,
            experts,
            shared,
            layers,
            hidden,
            specs,
            sources,
            _out_config(config, cfg, out_dtype),
            out_dtype,
            output,
            device,
            warnings,
            layer_inputs,
        )
    except BaseException:
        for ck in opened.values():
            ck.close()
        raise


def _layout(config: MoEConfig, base, experts, shared, layers: int, dtype):
    mix = config.architecture == "mixtral"
    specs: list[TensorSpec] = []
    sources: list[tuple] = []

    def add(name, shape, src_dtype, source):
        specs.append(TensorSpec(name, tuple(shape), dtype if (dtype is not None and src_dtype.is_floating_point) else src_dtype))
        sources.append(source)

    cfg = base.config or {}
    for info in base.infos():
        n = info.name
        if ".mlp." in n:
            continue
        add(n, info.shape, info.torch_dtype, ("copy", base, n))
    if not mix:  # Qwen2-MoE's attention has biases: zeros where the base has none
        heads, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        for i in range(layers):
            for p, h in (("q_proj", heads), ("k_proj", kv), ("v_proj", kv)):
                n = f"model.layers.{i}.self_attn.{p}.bias"
                if n not in base:
                    add(n, (h * head_dim,), specs[0].dtype, ("zeros",))
    wdt = base.info("model.layers.0.mlp.gate_proj.weight").torch_dtype
    hidden = cfg["hidden_size"]
    for i in range(layers):
        moe = f"model.layers.{i}.block_sparse_moe" if mix else f"model.layers.{i}.mlp"
        add(f"{moe}.gate.weight", (len(experts), hidden), wdt, ("gate", i, slice(0, len(experts))))
        for e, (ck, ex) in enumerate(zip(experts, config.experts)):
            for p in MLP:
                src = f"model.layers.{i}.mlp.{p}.weight"
                name = f"{moe}.experts.{e}.{MIXTRAL_NAMES[p]}.weight" if mix else f"{moe}.experts.{e}.{p}.weight"
                add(name, ck.info(src).shape, ck.info(src).torch_dtype, ("expert", ck, src, ex, p == "down_proj", (i, e, p)))
        for ck, ex in zip(shared, config.shared_experts):
            for p in MLP:
                src = f"model.layers.{i}.mlp.{p}.weight"
                add(
                    f"{moe}.shared_expert.{p}.weight",
                    ck.info(src).shape,
                    ck.info(src).torch_dtype,
                    ("expert", ck, src, ex, p == "down_proj", (i, -1, p)),
                )
            add(f"{moe}.shared_expert_gate.weight", (1, hidden), wdt, ("gate", i, slice(len(experts), len(experts) + 1)))
    return specs, sources


def _out_config(config: MoEConfig, base_cfg: dict, dtype: torch.dtype) -> dict:
    out = dict(base_cfg)
    name = str(dtype).removeprefix("torch.")
    for k in ("torch_dtype", "dtype"):
        if k in out or k == "dtype":
            out[k] = name
    if config.architecture == "mixtral":
        out.update(
            model_type="mixtral",
            architectures=["MixtralForCausalLM"],
            num_local_experts=len(config.experts),
            num_experts_per_tok=config.experts_per_token,
            sliding_window=None,
            output_router_logits=False,
            router_aux_loss_coef=out.get("router_aux_loss_coef", 0.001),
        )
    else:
        inter = base_cfg.get("intermediate_size")
        out.update(
            model_type="qwen2_moe",
            architectures=["Qwen2MoeForCausalLM"],
            num_experts=len(config.experts),
            num_experts_per_tok=config.experts_per_token,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            sliding_window=None,
            use_sliding_window=False,
            moe_intermediate_size=inter,
            shared_expert_intermediate_size=inter,
            mlp_only_layers=[],
            qkv_bias=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# gates


def _tokenizer(folder):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SurgeonError(
            "gate_mode hidden and cheap_embed tokenize the prompts with transformers", "pip install transformers"
        ) from None
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def _ids(tok, prompt: str) -> list[int]:
    return tok((tok.bos_token or "") + prompt, add_special_tokens=False)["input_ids"]


def cheap_embed_vector(embed_row, tok, prompts: tuple[str, ...]) -> torch.Tensor:
    """Normalised sum of the prompts' token embeddings (bos prepended, as mergekit tokenizes them)."""
    total = None
    for p in prompts:
        for t in _ids(tok, p):
            r = embed_row(t)
            total = r if total is None else total + r
    return total / total.norm().clamp(min=1e-8)


def hidden_vectors(model, tok, prompts: tuple[str, ...], last: bool) -> torch.Tensor:
    """(layers, hidden): the hidden state entering each layer, last token or token mean, averaged over prompts."""
    acc = None
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([_ids(tok, p)])
            hs = model(input_ids=ids, output_hidden_states=True, return_dict=True).hidden_states[:-1]
            h = torch.stack(hs)[:, 0]  # (layers, seq, hidden)
            v = h[:, -1] if last else h.mean(1)
            acc = v if acc is None else acc + v
    return acc / len(prompts)


def gate_vectors(plan: MoEPlan) -> torch.Tensor:
    """(layers, experts + shared, hidden) router rows."""
    c = plan.config
    everyone: list[MoEExpert] = list(c.experts) + list(c.shared_experts)
    L, H, E = plan.layers, plan.hidden, len(everyone)
    g = torch.Generator().manual_seed(c.seed)
    if c.gate_mode == "random":
        return torch.randn((L, E, H), generator=g)
    if c.gate_mode == "uniform_random":
        s = math.sqrt(1.0 / H)
        return torch.rand((L, E, H), generator=g) * 2 * s - s
    tok = _tokenizer(plan.base.folder)
    rows = []
    if c.gate_mode == "cheap_embed":
        emb = plan.base.get("model.embed_tokens.weight")
        row = lambda t: emb[t].float()  # noqa: E731

        for ex in everyone:
            v = cheap_embed_vector(row, tok, ex.positive_prompts)
            if ex.negative_prompts:
                v = v - cheap_embed_vector(row, tok, ex.negative_prompts)
            rows.append((v / v.norm().clamp(min=1e-8)).expand(L, H))
        del emb
    elif plan.layer_inputs is not None:
        return layerwise_gate_vectors(plan, tok, everyone)
    else:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise SurgeonError("gate_mode hidden runs the base with transformers", "pip install transformers") from None
        model = AutoModelForCausalLM.from_pretrained(str(plan.base.folder), dtype=torch.float32, trust_remote_code=False).eval()
        last = c.gate_mode != "hidden_avg"
        for ex in everyone:
            v = hidden_vectors(model, tok, ex.positive_prompts, last)
            if ex.negative_prompts:
                v = v - hidden_vectors(model, tok, ex.negative_prompts, last)
            rows.append(v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8))
        del model
    return torch.stack(rows, dim=1)


def layerwise_gate_vectors(plan: MoEPlan, tok, everyone: list[MoEExpert]) -> torch.Tensor:
    """``hidden`` router rows from ``plan.layer_inputs``: every prompt of every expert is one batch, walked
    through the base one layer at a time; each layer's rows are made as soon as its inputs are known, with
    the arithmetic (and order) of ``hidden_vectors``."""
    last = plan.config.gate_mode != "hidden_avg"
    groups = [ex.positive_prompts for ex in everyone] + [ex.negative_prompts for ex in everyone]
    batches = [torch.tensor([_ids(tok, p)]) for g in groups for p in g]
    out = torch.zeros(plan.layers, len(everyone), plan.hidden)
    seen = 0
    for i, xs in plan.layer_inputs(plan.base, batches, plan.device):
        seen += 1
        means, k = [], 0
        for g in groups:
            acc = None
            for x in xs[k : k + len(g)]:
                h = x[0].float().cpu()  # (seq, hidden)
                v = h[-1] if last else h.mean(0)
                acc = v if acc is None else acc + v
            k += len(g)
            means.append(None if acc is None else acc / len(g))
        for e in range(len(everyone)):
            v = means[e] if means[len(everyone) + e] is None else means[e] - means[len(everyone) + e]
            out[i, e] = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    if seen != plan.layers:
        raise SurgeonError(f"{plan.config.base_model}: the layer walk gave {seen} layers of {plan.layers}")
    return out


# --------------------------------------------------------------------------------------------
# run


def _noise(plan: MoEPlan, t: torch.Tensor, ex: MoEExpert, residual: bool, key: tuple) -> torch.Tensor:
    if ex.noise_scale is not None:
        from .run import tensor_seed

        g = torch.Generator().manual_seed(tensor_seed(plan.config.seed, "moe", hash(key) & 0xFFFF, 0))
        t = t.float() + torch.randn(t.shape, generator=g) * float(ex.noise_scale)
    if residual and ex.residual_scale is not None:
        t = t.float() * float(ex.residual_scale)
    return t


def run_moe(plan: MoEPlan, progress: Progress = SILENT, command: str = "surgeon merge") -> MoEResult:
    if plan.output is None:
        raise SurgeonError("this MoE plan has no output", "plan it with an output folder to run it")
    t0 = time.perf_counter()
    planned = plan.result()
    progress.start(f"MoE ({plan.config.architecture}, {len(plan.config.experts)} experts)", len(plan.specs), "tensors")
    try:
        with cpu_threads():
            gates = gate_vectors(plan)

            def tensors():
                def read(spec, src):
                    kind = src[0]
                    if kind == "copy":
                        return spec, src[1].get(src[2])
                    if kind == "expert":
                        return spec, _noise(plan, src[1].get(src[2]), src[3], src[4], src[5])
                    if kind == "gate":
                        return spec, gates[src[1], src[2]].contiguous()
                    return spec, torch.zeros(spec.shape, dtype=spec.dtype)

                for spec, t in prefetched((read(s, src) for s, src in zip(plan.specs, plan.sources)), depth=1):
                    progress.advance(1)
                    yield spec.name, t.to(spec.dtype)

            files = {"config.json": json.dumps(plan.out_config, indent=2) + "\n"}
            for f in plan.base.aux_files():
                rel = f.relative_to(plan.base.folder).as_posix()
                if rel in TOKENIZER_FILES or rel == "generation_config.json" or rel.endswith(".jinja"):
                    files[rel] = f.read_bytes()
            files["README.md"] = _card(plan)
            target = write_folder(
                plan.output,
                plan.specs,
                tensors(),
                source=None,
                command=command,
                metadata={"moe_architecture": plan.config.architecture, "moe_gate_mode": plan.config.gate_mode},
                extra_files=files,
            )
    finally:
        plan.close()
    planned.dry_run = False
    planned.output = str(target)
    planned.files = sorted(p.name for p in target.iterdir())
    planned.seconds = time.perf_counter() - t0
    return planned


def _card(plan: MoEPlan) -> str:
    from modelsurgeon import __version__

    c = plan.config
    lines = [
        "---",
        f"base_model: {c.base_model}",
        "library_name: transformers",
        "tags:",
        "- moe",
        "- merge",
        "- modelsurgeon",
        "---",
        "",
    ]
    lines += [
        f"# Mixture of experts ({'Mixtral' if c.architecture == 'mixtral' else 'Qwen MoE'})",
        "",
        f"Made with modelsurgeon {__version__}: {len(c.experts)} experts, {c.experts_per_token} per token, "
        f"router from `{c.gate_mode}`.",
        "",
    ]
    lines += [f"- expert {i}: {e.source_model}" for i, e in enumerate(c.experts)]
    lines += [f"- shared expert: {e.source_model}" for e in c.shared_experts]
    return "\n".join(lines) + "\n"
