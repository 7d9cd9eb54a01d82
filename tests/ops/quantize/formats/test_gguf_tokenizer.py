"""Tokenizer export for GGUF: the pre-tokenizer found by the check-text hash (an unknown one is an error naming
--pre-tokenizer), token types, padding to the model's vocab size, special tokens and add_bos from the files."""

from __future__ import annotations

import json

import gguf
import pytest

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.quantize.formats.gguf import metadata_of
from modelsurgeon.ops.quantize.formats.gguf_tokenizer import add_vocab, vocab_kind

_ADDED = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}


def _folder(tmp_path, tok_cfg=None):
    vocab = {"a": 1, "b": 2, "ab": 3}
    tok = {
        "added_tokens": [
            {**_ADDED, "id": 0, "content": "<s>", "special": True},
            {**_ADDED, "id": 4, "content": "<x>", "special": False},
        ],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}},
        },
        "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    default = {"bos_token": {"content": "<s>"}, "eos_token": "<x>", "chat_template": "T"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(default if tok_cfg is None else tok_cfg))
    return tmp_path


def _vocab(folder, config, pre=None):
    w = gguf.GGUFWriter(None, "llama")
    add_vocab(w, folder, config, vocab_kind(folder, "auto", {}), pre)
    return metadata_of(w)


def test_unknown_pre_tokenizer_is_an_error_naming_the_flag(tmp_path):
    with pytest.raises(SurgeonError, match="--pre-tokenizer NAME") as e:
        _vocab(_folder(tmp_path), {"vocab_size": 7})
    assert "check-text hash" in str(e.value)


def test_bpe_vocabulary_with_a_named_pre_tokenizer(tmp_path):
    kv = _vocab(_folder(tmp_path), {"vocab_size": 7}, pre="gpt-2")
    assert kv["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ab", "<x>", "[PAD5]", "[PAD6]"]
    assert kv["tokenizer.ggml.token_type"] == [3, 1, 1, 1, 4, 5, 5]
    assert kv["tokenizer.ggml.merges"] == ["a b"] and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert kv["tokenizer.ggml.bos_token_id"] == 0 and kv["tokenizer.ggml.eos_token_id"] == 4
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.chat_template"] == "T"


def test_special_ids_from_the_post_processor_then_config(tmp_path):
    """As gguf-py's SpecialVocab: the post-processor's leading token is BOS; config.json fills the rest."""
    kv = _vocab(_folder(tmp_path, tok_cfg={"x": 1}), {"vocab_size": 5, "bos_token_id": 1, "eos_token_id": 2}, pre="gpt-2")
    assert kv["tokenizer.ggml.bos_token_id"] == 0 and kv["tokenizer.ggml.eos_token_id"] == 2


def test_token_ids_beyond_vocab_size_are_an_error(tmp_path):
    with pytest.raises(SurgeonError, match=r"token id 4 but the model has 3 embedding rows \(config.json vocab_size\)"):
        _vocab(_folder(tmp_path), {"vocab_size": 3}, pre="gpt-2")


def test_missing_tokenizer_is_an_error(tmp_path):
    with pytest.raises(SurgeonError, match="no tokenizer.json or tokenizer.model"):
        vocab_kind(tmp_path, "auto", {})
