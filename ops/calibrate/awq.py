"""AWQ (Lin et al. 2023, https://arxiv.org/abs/2306.00978; mit-han-lab/llm-awq ``auto_scale.py``, ``auto_clip.py``).

Activation-aware scaling: for every group of linears that read one op's output (``MAPPINGS``: the norm before
q/k/v, v before o, the norm before gate/up, up before down), search ``s = mean|x|^r`` (r in 0, 1/20, ... 19/20,
normalised by ``sqrt(max s * min s)``) minimising the output error of the block that holds them when their weights
``W * s`` are quantized (then divided by ``s``); fold ``1/s`` into the op before (a norm's weight, or the last rows
of a linear) and ``s`` into the linears, which leaves the model's function unchanged. Then clipping: per group of
weights, the largest ``|w|`` is shrunk by 0..45% in steps of 5% to minimise the error of ``x w`` on at most 512
sampled input tokens (q and k are skipped, as upstream: the attention product makes their error hard to measure).
The quantizer is the scheme's own round-to-nearest (``roundtrip``), which then quantizes the scaled, clipped
weights for the output. As upstream, the next layer is fed the original layer's outputs (scaling keeps them).

Mappings are by name and exist for the Llama, Mistral, Qwen2/Qwen3, Gemma (1, 2, 3) and Phi-3 families;
any other ``model_type`` is an error naming what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from modelsurgeon.ops.core.errors import SurgeonError

N_GRID = 20
MAX_SHRINK = 0.5
CLIP_TOKENS = 512


@dataclass(frozen=True)
class Mapping:
    prev: str  # the op whose output the linears read: a norm, or a linear whose last rows feed them
    linears: tuple[str, ...]
    inspect: str | None = None  # the module whose output measures the error (None: the single linear)
    norm_offset: float = 0.0  # Gemma's norms multiply by (offset + weight)


_LLAMA = (
    Mapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    Mapping("self_attn.v_proj", ("self_attn.o_proj",)),
    Mapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    Mapping("mlp.up_proj", ("mlp.down_proj",)),
)


def _gemma(pre_ffn: str) -> tuple[Mapping, ...]:
    return (
        Mapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn", 1.0),
        Mapping("self_attn.v_proj", ("self_attn.o_proj",)),
        Mapping(pre_ffn, ("mlp.gate_proj", "mlp.up_proj"), "mlp", 1.0),
        Mapping("mlp.up_proj", ("mlp.down_proj",)),
    )


MAPPINGS: dict[str, tuple[Mapping, ...]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _gemma("post_attention_layernorm"),
    "gemma2": _gemma("pre_feedforward_layernorm"),
    "gemma3_text": _gemma("pre_feedforward_layernorm"),
    "phi3": (
        Mapping("input_layernorm", ("self_attn.qkv_proj",), "self_attn"),
        Mapping("self_attn.qkv_proj", ("self_attn.o_proj",)),
        Mapping("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp"),
        Mapping("mlp.gate_up_proj", ("mlp.down_proj",)),
    ),
}
NO_CLIP = ("q_proj", "k_proj", "qkv_proj")


def mappings_for(model_type: str, label: str) -> tuple[Mapping, ...]:
    if model_type not in MAPPINGS:
        raise SurgeonError(
            f"--method awq has no layer mapping for model_type {model_type!r} ({label})",
            f"AWQ knows {', '.join(MAPPINGS)}; use --method gptq, which needs none",
        )
    return MAPPINGS[model_type]


def scale_candidates(x_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    s = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
    return s / (s.max() * s.min()).sqrt()


def search_scale(
    x_mean: torch.Tensor,
    linears: Sequence[torch.nn.Linear],
    run: Callable[[], float],
    roundtrip: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, float, list[float]]:
    """llm-awq ``_search_module_scale``: the scales of the lowest block-output error. ``run()`` returns the
    block's mean squared error against its original output with the linears as they stand."""
    originals = [lin.weight.detach().clone() for lin in linears]
    best, best_scales, history = math.inf, None, []
    for r in range(N_GRID):
        s = scale_candidates(x_mean, r / N_GRID)
        with torch.no_grad():
            for lin, w in zip(linears, originals):
                lin.weight.copy_(roundtrip(w * s.view(1, -1)) / s.view(1, -1))
        loss = run()
        history.append(loss)
        if loss < best:
            best, best_scales = loss, s
    with torch.no_grad():
        for lin, w in zip(linears, originals):
            lin.weight.copy_(w)
    if best_scales is None:
        raise SurgeonError("AWQ found no finite output error for any scale", "the calibration inputs hold NaN or inf")
    return best_scales, best, history


def apply_scale(prev: torch.nn.Module, linears: Sequence[torch.nn.Linear], s: torch.Tensor, norm_offset: float = 0.0) -> None:
    """Fold ``1/s`` into ``prev`` (a norm's weight and bias, or a linear's last ``len(s)`` output rows) and ``s``
    into the input columns of ``linears``: the composition is unchanged."""
    with torch.no_grad():
        if isinstance(prev, torch.nn.Linear):
            n = s.numel()
            prev.weight[-n:].div_(s.view(-1, 1))
            if prev.bias is not None:
                prev.bias[-n:].div_(s)
        else:
            w = prev.weight
            w.copy_((w + norm_offset) / s - norm_offset)
            if getattr(prev, "bias", None) is not None:
                prev.bias.div_(s)
        for lin in linears:
            lin.weight.mul_(s.view(1, -1))


def auto_clip(w: torch.Tensor, x: torch.Tensor, group: int, roundtrip: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """llm-awq ``auto_clip_layer``: per (row, group), the clip value ``max|w| * (1 - i/20)``, i < 10, of the lowest
    error of ``x w`` on at most 512 tokens of ``x`` (every (tokens // 512)-th). Returns (rows, groups)."""
    rows, cols = w.shape
    ng = cols // group
    step = max(1, x.shape[0] // CLIP_TOKENS)
    feat = x[0::step].float().reshape(1, -1, ng, group)
    wg = w.float().reshape(rows, 1, ng, group)
    per_row = feat.shape[1] * cols * 4
    batch = max(1, min(rows, (256 << 20) // max(per_row, 1)))
    out = []
    for r0 in range(0, rows, batch):
        wb = wg[r0 : r0 + batch]
        org_max = wb.abs().amax(dim=-1, keepdim=True)
        best_max = org_max.clone()
        min_errs = torch.full_like(org_max, float("inf"))
        org_out = (feat * wb).sum(dim=-1)
        for i_s in range(int(MAX_SHRINK * N_GRID)):
            max_val = org_max * (1 - i_s / N_GRID)
            cur = torch.clamp(wb, -max_val, max_val)
            q = roundtrip(cur.reshape(cur.shape[0], cols)).reshape(cur.shape)
            err = ((feat * q).sum(dim=-1) - org_out).pow(2).mean(dim=1).view(min_errs.shape)
            better = err < min_errs
            min_errs[better] = err[better]
            best_max[better] = max_val[better]
        out.append(best_max.reshape(-1, ng))
    return torch.cat(out)


def apply_clip(lin: torch.nn.Linear, max_val: torch.Tensor) -> None:
    with torch.no_grad():
        rows, cols = lin.weight.shape
        ng = max_val.shape[1]
        w = lin.weight.view(rows, ng, cols // ng)
        m = max_val.unsqueeze(-1).to(w.dtype)
        w.copy_(torch.clamp(w, -m, m))
