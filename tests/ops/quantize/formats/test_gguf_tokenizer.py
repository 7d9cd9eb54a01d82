"""Tokenizer export for GGUF: pre-tokenizer recognition, special tokens, padding to the model's vocab size."""

from __future__ import annotations

import json

import pytest

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.quantize.formats.gguf_tokenizer import _LLAMA3_SPLIT, _QWEN2_SPLIT, detect_pre, read_vocab

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize("pre,name", [
    (BYTE_LEVEL, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated"},
                                            {**BYTE_LEVEL, "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated"},
                                            {**BYTE_LEVEL, "use_regex": False}]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "x+"}}, {**BYTE_LEVEL, "use_regex": False}]}, None),
    ({"type": "Metaspace"}, None),
])  # fmt: skip
def test_detect_pre(pre, name):
    assert detect_pre(pre) == name


def _folder(tmp_path, pre=BYTE_LEVEL, added=True, tok_cfg=None):
    vocab = {"a": 1, "b": 2, "ab": 3}
    tok = {
        "added_tokens": [{"id": 0, "content": "<s>", "special": True}, {"id": 4, "content": "<x>", "special": False}]
        if added
        else [],
        "pre_tokenizer": pre,
        "decoder": {"type": "ByteLevel"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        },
        "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    default = {"bos_token": {"content": "<s>"}, "eos_token": "<x>", "chat_template": "T"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(default if tok_cfg is None else tok_cfg))
    return tmp_path


def test_bpe_vocabulary(tmp_path):
    kv = read_vocab(_folder(tmp_path), {"vocab_size": 7})
    assert kv["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ab", "<x>", "[PAD5]", "[PAD6]"]
    assert kv["tokenizer.ggml.token_type"] == [3, 1, 1, 1, 4, 5, 5]
    assert kv["tokenizer.ggml.merges"] == ["a b"] and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert kv["tokenizer.ggml.bos_token_id"] == 0 and kv["tokenizer.ggml.eos_token_id"] == 4
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.chat_template"] == "T"


def test_unknown_pre_tokenizer_warns_and_says_default(tmp_path):
    seen = []
    pre = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Split", "pattern": {"Regex": "x"}}, {**BYTE_LEVEL, "use_regex": False}],
    }
    kv = read_vocab(_folder(tmp_path, pre=pre), {"vocab_size": 5}, warn=seen.append)
    assert kv["tokenizer.ggml.pre"] == "default" and "not one modelsurgeon recognises" in seen[0]


def test_special_ids_fall_back_to_config(tmp_path):
    kv = read_vocab(_folder(tmp_path, tok_cfg={}), {"vocab_size": 5, "bos_token_id": 1, "eos_token_id": 2})
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2


def test_missing_tokenizer_is_an_error(tmp_path):
    with pytest.raises(SurgeonError, match="no tokenizer.json or tokenizer.model"):
        read_vocab(tmp_path, {"vocab_size": 5})
