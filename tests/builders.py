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
