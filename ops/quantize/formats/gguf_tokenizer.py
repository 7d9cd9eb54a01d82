"""The tokenizer of a Hugging Face model folder, as GGUF ``tokenizer.*`` metadata for llama.cpp.

Two sources, tried in order:

- ``tokenizer.json`` with a byte-level BPE model (GPT-2 style: SmolLM, Llama 3, Qwen2...): ``tokenizer.ggml.model
  = "gpt2"``, tokens by id, merges, token types (added special tokens are CONTROL, other added tokens
  USER_DEFINED, holes up to the model's vocab size ``[PAD{i}]`` UNUSED), and the pre-tokenizer name that
  tells llama.cpp which split regex to apply, recognised from the pre-tokenizer's structure (see
  ``detect_pre``). An unrecognised one is written as ``default`` with a warning: llama.cpp then splits like
  GPT-2, which changes tokenization only around digits and contractions.
- ``tokenizer.model`` (SentencePiece, Llama 1/2, Mistral): ``tokenizer.ggml.model = "llama"``, pieces, scores
  and types read from the protobuf by a small reader here (no sentencepiece dependency).

Special token ids come from ``tokenizer_config.json`` (falling back to ``config.json``), the chat template
from ``tokenizer_config.json`` or ``chat_template.jinja``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from modelsurgeon.ops.core.errors import SurgeonError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of byte-level BPE tokenizers, as tokenizer.json spells them, -> llama.cpp's pre-tokenizer names
_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
_QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"


def _flatten(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        subs = pre.get("pretokenizers")
        return [p for sub in subs if isinstance(sub, dict) for p in _flatten(sub)] if isinstance(subs, list) else []
    return [pre]


def _split_regex(p: dict) -> str | None:
    pat = p.get("pattern")
    return (pat.get("Regex") or pat.get("String")) if isinstance(pat, dict) else None


def detect_pre(pre_tokenizer: dict | None) -> str | None:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, or None when it is not one we recognise."""
    steps = _flatten(pre_tokenizer)
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # each digit alone, then GPT-2's split (llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        rx = _split_regex(steps[0])
        if rx == _LLAMA3_SPLIT:
            return "llama-bpe"
        if rx == _QWEN2_SPLIT:
            return "qwen2"
    return None


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SurgeonError(f"cannot read {path}: {e}", "fix or remove the file") from None
    if not isinstance(data, dict):
        raise SurgeonError(f"{path} holds a JSON {type(data).__name__}, not an object", "fix or remove the file")
    return data


def _malformed(path: Path, what: str) -> SurgeonError:
    return SurgeonError(f"{path} is malformed: {what}", "fix the file, or re-save the tokenizer with transformers")


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_tokenizer_json(tok: dict, path: Path, rows: int) -> None:
    """The parts of tokenizer.json the export reads, with their types, and every token id below ``rows`` (the
    model's embedding rows): checked before anything is sized from them."""
    for key in ("model", "pre_tokenizer", "post_processor", "decoder", "normalizer"):
        if tok.get(key) is not None and not isinstance(tok[key], dict):
            raise _malformed(path, f"{key} is a {type(tok[key]).__name__}, not an object")
    model = tok.get("model") or {}
    vocab = model.get("vocab")
    if vocab is not None and not (isinstance(vocab, dict) and all(_is_id(i) for i in vocab.values())):
        raise _malformed(path, "model.vocab must map tokens to non-negative integer ids")
    merges = model.get("merges")
    if merges is not None and not (
        isinstance(merges, list)
        and all(isinstance(m, str) or (isinstance(m, list) and all(isinstance(p, str) for p in m)) for m in merges)
    ):
        raise _malformed(path, "model.merges must be a list of strings or of string pairs")
    added = tok.get("added_tokens")
    if added is not None and not (
        isinstance(added, list)
        and all(isinstance(a, dict) and _is_id(a.get("id")) and isinstance(a.get("content"), str) for a in added)
    ):
        raise _malformed(path, "added_tokens must be a list of {id, content}")
    ids = [*(vocab or {}).values(), *(a["id"] for a in added or [])]
    top = max(ids, default=-1)
    if top >= rows:
        raise SurgeonError(
            f"{path} has token id {top} but the model has {rows} embedding rows (config.json vocab_size)",
            "the tokenizer does not belong to this model; fix tokenizer.json or vocab_size",
        )
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and not (
        isinstance(pre.get("pretokenizers"), list) and all(isinstance(p, dict) for p in pre["pretokenizers"])
    ):
        raise _malformed(path, "pre_tokenizer.pretokenizers must be a list of objects")
    post = tok.get("post_processor") or {}
    if post.get("type") == "Sequence" and not (
        isinstance(post.get("processors"), list) and all(isinstance(p, dict) for p in post["processors"])
    ):
        raise _malformed(path, "post_processor.processors must be a list of objects")


def _token_text(v) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def read_vocab(folder: Path, config: dict, warn=lambda msg: None) -> dict:
    """GGUF tokenizer metadata for the model in ``folder``: a dict of key -> value (lists for arrays)."""
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    tok_cfg = _load_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size < 2**31:
        raise SurgeonError(f"config.json has vocab_size {vocab_size!r}; a GGUF vocabulary needs a positive integer")
    kv: dict = {}
    token_ids: dict[str, int] = {}
    spm = None
    if tj.is_file():
        tok = _load_json(tj)
        check_tokenizer_json(tok, tj, vocab_size)
        model = tok.get("model") or {}
        kinds = [s.get("type") for s in _flatten(tok.get("pre_tokenizer"))] + [(tok.get("decoder") or {}).get("type")]
        if model.get("type") == "BPE" and "ByteLevel" in kinds:
            kv, token_ids = _bpe_vocab(tok, vocab_size, warn)
        elif tm.is_file():
            spm = tm
        else:
            raise SurgeonError(
                f"{tj} holds a {model.get('type', 'unknown')} tokenizer that is not byte-level BPE, and there is no tokenizer.model",
                "GGUF export reads byte-level BPE from tokenizer.json or SentencePiece from tokenizer.model",
            )
    elif tm.is_file():
        spm = tm
    else:
        raise SurgeonError(
            f"{folder} has no tokenizer.json or tokenizer.model, which a GGUF file must carry",
            "put the model's tokenizer files beside its weights",
        )
    if spm is not None:
        kv, token_ids = _spm_vocab(spm, vocab_size)
    if len(kv["tokenizer.ggml.tokens"]) > vocab_size:
        raise SurgeonError(
            f"the tokenizer of {folder} has {len(kv['tokenizer.ggml.tokens'])} tokens but config.json vocab_size is {vocab_size}",
            "llama.cpp needs one token per embedding row; fix the tokenizer or the config",
        )
    # special tokens: names from tokenizer_config.json, ids from the vocabulary; else config.json's ids
    for key, gguf_key in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("pad", "padding_token_id"),
    ):
        text = _token_text(tok_cfg.get(f"{key}_token"))
        tid = token_ids.get(text) if text is not None else None
        if tid is None and _is_id(config.get(f"{key}_token_id")):
            tid = config[f"{key}_token_id"]
        if tid is not None and tid < vocab_size:
            kv[f"tokenizer.ggml.{gguf_key}"] = int(tid)
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(tok_cfg.get(flag), bool):
            kv[f"tokenizer.ggml.{flag}"] = tok_cfg[flag]
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # named templates: llama.cpp reads the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if not template and (folder / "chat_template.jinja").is_file():
        try:
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SurgeonError(f"cannot read {folder / 'chat_template.jinja'}: {e}") from None
    if isinstance(template, str) and template:
        kv["tokenizer.chat_template"] = template
    return kv


def _bpe_vocab(tok: dict, vocab_size: int, warn) -> tuple[dict, dict[str, int]]:
    model = tok["model"]
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = tok.get("added_tokens") or []
    ids = list(vocab.values()) + [int(a["id"]) for a in added]
    n = max([vocab_size, *(i + 1 for i in ids)])
    tokens: list[str | None] = [None] * n
    types = [NORMAL] * n
    for text, i in vocab.items():
        tokens[i] = text
    for a in added:
        tokens[int(a["id"])] = a["content"]
        types[int(a["id"])] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if not merges:
        raise SurgeonError(
            "the BPE tokenizer in tokenizer.json has no merges, and llama.cpp refuses a BPE vocabulary without them"
        )
    pre = detect_pre(tok.get("pre_tokenizer"))
    if pre is None:
        warn(
            "the tokenizer's pre-tokenizer is not one modelsurgeon recognises; the GGUF says 'default' "
            "(llama.cpp splits like GPT-2), which can tokenize digits and contractions differently"
        )
        pre = "default"
    post = tok.get("post_processor") or {}
    kv = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.add_bos_token": _adds_bos(post),
    }
    return kv, {t: i for i, t in enumerate(tokens)}


def _adds_bos(post: dict) -> bool:
    """Whether the post-processor puts a special token in front of a single sequence."""
    procs = post.get("processors") if post.get("type") == "Sequence" else [post]
    for p in procs or []:
        single = p.get("single")
        if p.get("type") == "TemplateProcessing" and isinstance(single, list) and single:
            return isinstance(single[0], dict) and "SpecialToken" in single[0]
    return False


# --------------------------------------------------------------------------------------------
# SentencePiece model files: a protobuf ModelProto whose field 1 repeats {1: piece, 2: score, 3: type}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i : i + n], i + n
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        yield field, wire, val


def read_sentencepiece(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece of a SentencePiece ``tokenizer.model``."""
    try:
        data = path.read_bytes()
        pieces = []
        for field, wire, val in _fields(data):
            if field != 1 or wire != 2:
                continue
            piece, score, kind = "", 0.0, NORMAL
            for f, w, v in _fields(val):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    kind = int(v)
            pieces.append((piece, score, kind))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise SurgeonError(f"cannot read {path} as a SentencePiece model: {e}") from None
    if not pieces:
        raise SurgeonError(f"{path} holds no SentencePiece pieces")
    return pieces


def _spm_vocab(path: Path, vocab_size: int) -> tuple[dict, dict[str, int]]:
    pieces = read_sentencepiece(path)
    tokens = [p[0] for p in pieces]
    scores = [float(p[1]) for p in pieces]
    types = [p[2] for p in pieces]
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    kv = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
    }
    return kv, {t: i for i, t in enumerate(tokens)}
