"""Each GGUF tensor's type: the converter's float types, a single block type, or llama-quantize's mixtures.

llama.cpp's ``llama-quantize`` picks a type per tensor for a mixture (``Q4_K_M`` ...): a default type, promoted
for the output/tied embedding, attention V and FFN-down by layer (``llama_tensor_get_type_impl`` in
``src/llama-quant.cpp``), then a fallback when a row is not a whole number of blocks (``tensor_type_fallback``).
``mixture_types`` is that choice for the families and mixtures here, written from the rules (a test runs
``llama_model_quantize`` on the same model and compares every tensor's type).
"""

from __future__ import annotations

import re

from .gguf import FLOAT_TYPES, GGUFTensor, float_type

BLOCK_SIZE = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256}
BLOCK_SIZE.update({"Q5_K": 256, "Q6_K": 256})
# mixture -> its default block type (llama_ftype_get_default_type)
MIXTURES = {
    "Q2_K": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
}
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def category(name: str) -> str:
    """llama.cpp's ``tensor_get_category``."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (
        ("attn_qkv.weight", "attn_v"),  # attention-V-like: qkv and kv_b count as V
        ("attn_kv_b.weight", "attn_v"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if part in name:
            return "attn_qkv" if part == "attn_qkv.weight" else cat
    return "other"


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(qtype: str, cols: int) -> str:
    """``tensor_type_fallback``: a type whose blocks fit a row of ``cols`` values."""
    if cols % BLOCK_SIZE[qtype] == 0:
        return qtype
    new = FALLBACK.get(qtype, qtype)
    return new if cols % BLOCK_SIZE[new] == 0 else "F16"


def mixture_types(
    tensors: list[GGUFTensor], mixture: str, config: dict, arch: str, quantize: set[str], fallbacks: list | None = None
) -> dict[str, str]:
    """llama-quantize's type for every tensor in ``quantize`` (GGUF names) under ``mixture``."""
    default = MIXTURES[mixture]
    n_head = int(config.get("num_attention_heads") or 1)
    n_kv = int(config.get("num_key_value_heads") or n_head)
    n_gqa = n_head // max(1, n_kv)
    n_expert = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    n_layer = int(config.get("num_hidden_layers") or 1)
    is_70b = arch == "llama" and n_layer == 80 and n_head != n_kv
    names = [t.name for t in tensors]
    tied = "output.weight" not in names
    n_attn_v = sum(category(n) in ("attn_v", "attn_qkv") for n in names)
    # llama.cpp walks the tensors sorted by layer, then by name; its counters follow that order
    order = sorted(tensors, key=lambda t: (int(m[1]) if (m := _LAYER.match(t.name)) else -1, t.name))
    i_v = i_down = 0
    out: dict[str, str] = {}
    for t in order:
        if t.name not in quantize:
            continue
        cat = category(t.name)
        cols = t.shape[-1]
        new = default
        layer = int(m[1]) if (m := _LAYER.match(t.name)) else 0
        if cat == "output" or (tied and cat == "token_embd"):
            if arch == "falcon" or cols % BLOCK_SIZE[new]:
                new = "Q8_0"
            elif new != "Q8_0":
                new = "Q6_K"
        elif cat == "token_embd":
            pass
        elif cat in ("attn_v", "attn_qkv"):  # fused qkv takes attention V's rules (llama.cpp tests V first)
            new = _attn_v_type(mixture, new, i_v, n_attn_v, n_gqa, is_70b, n_expert)
            i_v += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = "Q8_0"
        elif cat == "ffn_down":
            i_layer = layer if n_expert > 1 else i_down
            new = _ffn_down_type(mixture, new, i_layer, n_layer, arch)
            i_down += 1
        elif cat == "attn_output":
            if arch != "falcon":
                if n_expert == 8:
                    if mixture in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                        new = "Q5_K"
                else:
                    new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mixture, new)
            elif mixture == "Q3_K_L":
                new = "Q4_K"
        out[t.name] = fallback(new, cols)
        if out[t.name] != new and fallbacks is not None:
            fallbacks.append(f"{t.name}: rows of {cols} values are not whole {new} blocks; written as {out[t.name]}")
    return out


def _attn_v_type(mixture: str, new: str, i: int, n: int, n_gqa: int, is_70b: bool, n_expert: int) -> str:
    if mixture == "Q2_K":
        new = "Q4_K" if n_gqa >= 4 else "Q3_K"
    elif mixture == "Q3_K_M":
        new = "Q5_K" if i < 2 else "Q4_K"
    elif mixture == "Q3_K_L":
        new = "Q5_K"
    elif mixture in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
        new = "Q6_K"
    elif mixture == "Q4_K_S" and i < 4:
        new = "Q5_K"
    if is_70b and new in ("Q3_K", "Q4_K"):
        new = "Q5_K"
    if n_expert == 8:
        new = "Q8_0"
    return new


def _ffn_down_type(mixture: str, new: str, i: int, n: int, arch: str) -> str:
    if mixture == "Q2_K":
        return "Q3_K"
    if mixture == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K" if arch != "falcon" or _more_bits(i, n) else "Q3_K"
    if mixture == "Q3_K_L":
        return "Q4_K" if arch == "falcon" else "Q5_K"
    if mixture == "Q4_K_M":
        if arch == "falcon":
            return "Q6_K" if i < n // 16 else "Q5_K" if _more_bits(i, n) else "Q4_K"
        return "Q6_K" if _more_bits(i, n) else new
    if mixture == "Q5_K_M" and _more_bits(i, n):
        return "Q6_K"
    if mixture == "Q4_K_S" and arch != "falcon" and i < n // 8:
        return "Q5_K"
    return new


def choose_types(
    tensors: list[GGUFTensor], targets: set[str], scheme, config: dict, cfg, overrides: dict | None = None
) -> tuple[dict, list, list]:
    """(GGUF name -> type, notes, errors) for ``scheme`` (a Scheme with ``gguf_type``).

    Float schemes (f32, f16, bf16) give every tensor the converter's type. A single block type quantizes the
    selected tensors (default: linear weights) and refuses a row that is not whole blocks. A mixture follows
    llama-quantize: every tensor it would quantize (embeddings and output included), unless --include or
    --ignore narrows the selection. ``overrides`` (HF name -> Scheme: a recipe's per-tensor scheme, or
    --target-bpw's choice) replaces the choice for the GGUF tensor made of those targets."""
    from .gguf_arch import arch_of

    gtype = scheme.gguf_type
    types: dict[str, str] = {}
    notes: list[str] = []
    errors: list[str] = []
    src_dtype = {t.name: t.qtype for t in tensors}  # plan_tensors leaves the source dtype in qtype
    if gtype in FLOAT_TYPES:
        for t in tensors:
            types[t.name] = float_type(t.name, t.shape, src_dtype[t.name], gtype)
        _override_types(tensors, overrides or {}, src_dtype, types, errors)
        return types, notes, errors
    selected = {t.name for t in tensors if t.quantizable and t.sources and all(s in targets for s in t.sources)}
    if gtype in MIXTURES:
        if cfg.include is None and cfg.ignore is None:
            selected = {t.name for t in tensors if t.quantizable}
        types.update(mixture_types(tensors, gtype, config, arch_of(config, "model")[1].gguf, selected, notes))
    else:
        for t in tensors:
            if t.name in selected:
                if t.shape[-1] % BLOCK_SIZE[gtype]:
                    errors.append(
                        f"{t.hf_name} has rows of {t.shape[-1]} values, not a multiple of the {gtype} block size "
                        f"{BLOCK_SIZE[gtype]}; leave it out with --ignore"
                    )
                types[t.name] = gtype
    _override_types(tensors, overrides or {}, src_dtype, types, errors)
    for t in tensors:
        types.setdefault(t.name, float_type(t.name, t.shape, src_dtype[t.name], None))
    return types, notes, errors


def _override_types(tensors: list[GGUFTensor], overrides: dict, src_dtype: dict, types: dict, errors: list) -> None:
    """A target's own scheme replaces the type chosen for its GGUF tensor (a mixture name stands for its base
    type); stacked experts take one scheme, and a block type must fit the rows."""
    for t in tensors:
        if not t.sources or not any(s in overrides for s in t.sources):
            continue
        got = {overrides[s].name if s in overrides else None for s in t.sources}
        if len(got) != 1 or None in got:
            errors.append(f"{t.name} stacks {len(t.sources)} tensors into one GGUF tensor; give them all one scheme")
            continue
        otype = overrides[t.sources[0]].gguf_type
        otype = MIXTURES.get(otype, otype)
        if otype in FLOAT_TYPES:
            types[t.name] = float_type(t.name, t.shape, src_dtype[t.name], otype)
        elif t.shape[-1] % BLOCK_SIZE[otype]:
            errors.append(
                f"{t.hf_name} has rows of {t.shape[-1]} values, not a multiple of the {otype} block size "
                f"{BLOCK_SIZE[otype]}; give it another scheme"
            )
        else:
            types[t.name] = otype
