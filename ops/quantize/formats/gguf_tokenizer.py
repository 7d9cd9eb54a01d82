"""The tokenizer of a Hugging Face model folder, as GGUF ``tokenizer.*`` metadata, the way llama.cpp's converter
writes it (``TextModel._set_vocab_gpt2`` / ``_set_vocab_sentencepiece`` in ``convert_hf_to_gguf.py``).

Two kinds:

- byte-level BPE from ``tokenizer.json`` (Llama 3, Qwen, SmolLM, Mistral Tekken...): ``tokenizer.ggml.model =
  "gpt2"``, tokens by id (holes up to the model's vocab size are ``[PAD{i}]`` UNUSED; added tokens CONTROL when
  special or special-looking, else USER_DEFINED), and ``tokenizer.ggml.pre``: the name of the split rules
  llama.cpp applies before BPE. Like the converter, it is found by tokenizing a fixed check text and looking
  the sha256 of the ids up in ``PRE_TOKENIZER_HASHES``; an unknown hash is an error naming ``--pre-tokenizer
  NAME``, never a silent default (a wrong split changes how llama.cpp tokenizes).
- SentencePiece ``tokenizer.model`` (Llama 1/2, Mistral v0.1-0.3, Gemma): ``tokenizer.ggml.model = "llama"``,
  pieces, scores and types read from the protobuf by a small reader here, then the added tokens of
  ``added_tokens.json`` and ``tokenizer_config.json``.

Merges, special token ids, ``add_bos``/``add_eos`` and the chat template are read as the converter's gguf-py
``SpecialVocab`` reads them (``special_vocab`` below, after llama.cpp's current gguf-py: the PyPI release lags).
"""

from __future__ import annotations

import json
import struct
from hashlib import sha256
from pathlib import Path

from modelsurgeon.ops.core.errors import SurgeonError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The converter's check text (convert_hf_to_gguf.py get_vocab_base_pre): whitespace runs, emoji, digit runs,
# scripts, punctuation runs and English contractions, where pre-tokenizers differ.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
    "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)

# sha256(str(ids of CHECK_TEXT)) -> llama.cpp's pre-tokenizer name, for the tokenizers of the families we write
# and their common relatives (the values llama.cpp's convert_hf_to_gguf_update.py computed from each reference
# model; a test checks every pair against the converter when it is available).
PRE_TOKENIZER_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # abacusai/Smaug-Llama-3-70B
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",  # meta-llama/Llama-4-Scout
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B (Qwen2, 2.5, 3)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",  # Qwen/Qwen3.5-9B-Instruct
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # DeepSeek-R1-Distill-Qwen
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # mistralai/Mistral-Nemo-Base-2407
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",  # mistral-community/pixtral-12b
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # Xenova/gpt-4o (Phi-4)
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",  # microsoft/phi-2
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",  # stabilityai/stablelm-2-zephyr
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",  # bigcode/starcoder2-3b
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",  # tiiuae/falcon-7b
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",  # tiiuae/Falcon3-7B-Base
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",  # deepseek-llm-7b-base
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",  # deepseek-coder-6.7b-base
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",  # deepseek-ai/DeepSeek-V3
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",  # allenai/OLMo-1.7-7B-hf
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",  # CohereForAI/c4ai-command-r-v01
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",  # LGAI-EXAONE/EXAONE-3.0-7.8B
    "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb": "exaone4",  # LGAI-EXAONE/EXAONE-4.0-32B
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",  # bigscience/bloom
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",  # smallcloudai/Refact-1_6-base
    "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f": "superbpe",  # UW/OLMo2-8B-SuperBPE
    "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756": "mellum",  # JetBrains/Mellum-4b-base
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",  # ByteDance-Seed/Seed-Coder-8B
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",  # MiniMaxAI/MiniMax-M2
    "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890": "kimi-k2",  # moonshotai/Kimi-K2-Base
}
# llama.cpp's names for the split rules (llama-vocab.cpp), accepted by --pre-tokenizer
PRE_TOKENIZER_NAMES = sorted({*PRE_TOKENIZER_HASHES.values(), "default", "mpt", "llama3", "jina-v2-en", "gemma4"})


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SurgeonError(f"cannot read {path}: {e}", "fix or remove the file") from None
    if not isinstance(data, dict):
        raise SurgeonError(f"{path} holds a JSON {type(data).__name__}, not an object", "fix or remove the file")
    return data


_TOKENIZER_JSON: dict = {}  # (path, mtime, size) -> parsed tokenizer.json: read once per export, not three times


def _load_tokenizer_json(path: Path) -> dict:
    """tokenizer.json, parsed once (tens of MB for large vocabularies); callers only read it."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _TOKENIZER_JSON:
        _TOKENIZER_JSON.clear()
        _TOKENIZER_JSON[key] = _load_json(path)
    return _TOKENIZER_JSON[key]


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


def _looks_special(token: str) -> bool:
    """The converter's ``does_token_look_special``: added tokens some models forget to mark special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def check_hash(tokenizer_json: Path) -> str:
    """sha256 of the ids of ``CHECK_TEXT`` (special tokens added as the post-processor says), as the converter."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with the package's dependencies
        raise SurgeonError("GGUF export of a tokenizer.json needs the tokenizers package: pip install tokenizers") from None
    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception as e:  # the Rust library reports any problem as a plain Exception
        raise SurgeonError(f"cannot load {tokenizer_json}: {e}", "fix the tokenizer file") from None
    ids = tok.encode(CHECK_TEXT, add_special_tokens=True).ids
    return sha256(str(ids).encode()).hexdigest()


def identify_pre(tokenizer_json: Path, override: str | None = None) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json``."""
    if override is not None:
        return override
    h = check_hash(tokenizer_json)
    if h in PRE_TOKENIZER_HASHES:
        return PRE_TOKENIZER_HASHES[h]
    raise SurgeonError(
        f"the pre-tokenizer of {tokenizer_json} is not one modelsurgeon knows (check-text hash {h[:16]}...)",
        "if you know which llama.cpp pre-tokenizer it uses, pass --pre-tokenizer NAME "
        f"(one of: {', '.join(PRE_TOKENIZER_NAMES)})",
    )


# --------------------------------------------------------------------------------------------
# which tokenizer an architecture's converter reads


def vocab_kind(folder: Path, arch_tokenizer: str, tok_cfg: dict) -> str:
    """ "spm" or "bpe", following the converter's choice per architecture."""
    has_spm = (folder / "tokenizer.model").is_file() and arch_tokenizer != "bpe"
    has_json = (folder / "tokenizer.json").is_file()
    if arch_tokenizer == "spm" and not has_spm:
        raise SurgeonError(f"{folder} has no tokenizer.model, which this architecture's GGUF vocabulary is read from")
    if arch_tokenizer == "phi3" and tok_cfg.get("tokenizer_class") == "GPT2Tokenizer":
        has_spm = False
    if has_spm:
        return "spm"
    if has_json:
        return "bpe"
    raise SurgeonError(
        f"{folder} has no tokenizer.json or tokenizer.model, which a GGUF file must carry",
        "put the model's tokenizer files beside its weights",
    )


def add_vocab(writer, folder: Path, config: dict, kind: str, pre_override: str | None = None) -> int:
    """Write the tokenizer metadata into gguf-py ``writer``; returns the number of tokens."""
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = _load_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    vocab_size = config.get("vocab_size") or 0  # absent: the tokenizer's own size (text_config models)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 <= vocab_size < 2**31:
        raise SurgeonError(f"config.json has vocab_size {vocab_size!r}; a GGUF vocabulary needs a positive integer")
    tj = folder / "tokenizer.json"
    tok = None
    if tj.is_file():  # checked before anything is sized from it, whichever vocabulary is written
        tok = _load_tokenizer_json(tj)
        check_tokenizer_json(tok, tj, vocab_size or 2**31)
    if kind == "spm":
        tokens, scores, types = _spm_vocab(folder, vocab_size, tok_cfg)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        special = special_vocab(folder, config, False, len(tokens))
    else:
        tokens, types, pre = _bpe_vocab(folder, tok, vocab_size, pre_override)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = special_vocab(folder, config, True, None)
        if not special["merges"]:
            raise SurgeonError(f"the BPE tokenizer in {folder / 'tokenizer.json'} has no merges, which llama.cpp needs")
    write_special(writer, special)
    return len(tokens)


def _bpe_vocab(folder: Path, tok: dict | None, vocab_size: int, pre_override: str | None) -> tuple[list[str], list[int], str]:
    """``tok``: the parsed tokenizer.json, already through ``check_tokenizer_json`` (types, ids below the rows)."""
    tj = folder / "tokenizer.json"
    if tok is None:
        raise SurgeonError(f"{folder} has no tokenizer.json, which a BPE vocabulary is read from")
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise SurgeonError(
            f"{tj} holds a {model.get('type', 'unknown')} tokenizer and there is no tokenizer.model",
            "GGUF export reads byte-level BPE from tokenizer.json or SentencePiece from tokenizer.model",
        )
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["content"]: a for a in tok.get("added_tokens") or []}
    for text, a in added.items():
        vocab[text] = int(a["id"])
    n = vocab_size or (max(vocab.values()) + 1)
    if vocab and max(vocab.values()) >= n:
        raise SurgeonError(
            f"the tokenizer of {folder} has token id {max(vocab.values())} but config.json says vocab_size {n}",
            "llama.cpp needs one token per embedding row; fix the tokenizer or the config",
        )
    pre = identify_pre(tj, pre_override)
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        t = reverse.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif t in added:
            if added[t].get("special") or _looks_special(t):
                types.append(CONTROL)
            else:
                t = t.replace("\u2581", " ")  # user-defined tokens are pre-normalized for llama.cpp
                types.append(USER_DEFINED)
            tokens.append(t)
        else:
            tokens.append(t)
            types.append(NORMAL)
    return tokens, types, pre


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


def _spm_vocab(folder: Path, vocab_size: int, tok_cfg: dict) -> tuple[list[str], list[float], list[int]]:
    """``_create_vocab_sentencepiece``: pieces (user-defined ones read as NORMAL, as SentencePieceProcessor
    reports no such type), holes ``[PAD{i}]``, then added tokens from added_tokens.json and tokenizer_config.json."""
    pieces = read_sentencepiece(folder / "tokenizer.model")
    n = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i, (piece, score, kind) in enumerate(pieces[:n]):
        tokens[i], scores[i] = piece, score
        types[i] = kind if kind in (UNKNOWN, CONTROL, UNUSED, BYTE) else NORMAL
    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        for text, tid in _load_json(added_path).items():
            if int(tid) < n:
                tokens[int(tid)], scores[int(tid)], types[int(tid)] = text, -1000.0, USER_DEFINED
    for tid, data in (tok_cfg.get("added_tokens_decoder") or {}).items():
        tid = int(tid)
        if tid >= n:
            continue
        text = data["content"]
        if data.get("special") or _looks_special(text):
            types[tid] = CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[tid] = USER_DEFINED
        scores[tid] = -1000.0
        tokens[tid] = text
    return tokens, scores, types


# --------------------------------------------------------------------------------------------
# special tokens, add_bos/add_eos, merges, chat template: what the converter's gguf-py SpecialVocab reads
# (its current version; the PyPI gguf release lags behind it, so this is written here)

_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def special_vocab(folder: Path, config: dict, load_merges: bool, n_vocab: int | None) -> dict:
    """{"merges": [...], "ids": {type: id}, "add": {type: bool}, "chat_template": str|list|None}."""
    out: dict = {"merges": [], "ids": {}, "add": {}, "chat_template": None}
    types = list(_SPECIAL_TYPES)
    tj = folder / "tokenizer.json"
    tok = _load_tokenizer_json(tj) if tj.is_file() else None
    cfg_path = folder / "tokenizer_config.json"
    tc = _load_json(cfg_path) if cfg_path.is_file() else None
    added = (tok or {}).get("added_tokens") or []
    if tok and load_merges:
        merges = (tok.get("model") or {}).get("merges")
        if isinstance(merges, list) and merges:
            if isinstance(merges[0], str):
                out["merges"] = merges
            else:  # [a, b] pairs since transformers 4.45; spaces inside a part are written as U+0120
                out["merges"] = [" ".join(p.replace(" ", "\u0120") for p in m) for m in merges]
    if tok:
        _post_processor(tok.get("post_processor"), tc, out["add"], types)
    if tc:
        jinja, tjson = folder / "chat_template.jinja", folder / "chat_template.json"
        alt = None
        if jinja.is_file():
            alt = jinja.read_text(encoding="utf-8")
            extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
            if extra:
                alt = [{"name": "default", "template": alt}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra
                ]
        elif tjson.is_file():
            alt = _load_json(tjson).get("chat_template")
        tmpl = tc.get("chat_template", alt)
        if tmpl is None or isinstance(tmpl, (str, list)):
            out["chat_template"] = tmpl
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in out["add"]:
                out["add"][typ] = flag
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            tid = next((a.get("id") for a in added if a.get("content") == content), None)
            _set_id(out["ids"], typ, tid, n_vocab)
    for typ in types:  # then config.json's ids, for types still unset
        _set_id(out["ids"], typ, config.get(f"{typ}_token_id"), n_vocab)
    if load_merges and not out["merges"] and (folder / "merges.txt").is_file():
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip().startswith("#"):
            lines = lines[1:]
        out["merges"] = [f"{p[0]} {p[1]}" for line in lines if len(p := line.strip().split(None, 3)) == 2]
    return out


def _set_id(ids: dict, typ: str, tid, n_vocab: int | None) -> None:
    if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 and (n_vocab is None or tid < n_vocab):
        ids.setdefault(typ, tid)


def _post_processor(post: dict | None, tc: dict | None, add: dict, types: list[str]) -> None:
    """Which special tokens the post-processor adds (SpecialVocab's crude TemplateProcessing reading)."""
    if not post:
        return
    cfg = tc if tc else {}
    bos, cls, eos, sep = (cfg.get(f"{k}_token") for k in ("bos", "cls", "eos", "sep"))
    if not bos and cls and tc:
        tc["bos_token"] = bos = cls
    if not eos and sep and tc:
        tc["eos_token"] = eos = sep
    for p in post.get("processors", [post]):
        kind = p.get("type")
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
            if not cls and tc:
                tc["cls_token"] = cls = p.get("cls", [bos])[0]
            if not sep and tc:
                tc["sep_token"] = sep = p.get("sep", [eos])[0]
        elif kind == "TemplateProcessing":
            single, pair = p.get("single", []), p.get("pair", [])
            first = last = None
            if len(single) > 1:
                if first := single[0].get("SpecialToken", {}).get("id"):
                    if not tc:
                        bos = first
                    elif first not in (bos, cls):
                        if not bos:
                            tc["bos_token"] = bos = first
                        if not cls:
                            tc["cls_token"] = cls = first
                    add["bos"] = first in (bos, cls)
                if last := single[-1].get("SpecialToken", {}).get("id"):
                    if not tc:
                        eos = last
                    elif last != eos:
                        if "eot" not in types:
                            types.append("eot")
                            tc["eot_token"] = eos
                        elif "eom" not in types:
                            types.append("eom")
                            tc["eom_token"] = eos
                        tc["eos_token"] = eos = last
                    add["eos"] = last == eos
            if pair:
                start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
                stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
                pair = pair[start:stop]
                if pair and pair[0].get("Sequence", {}).get("id") == "A" and pair[-1].get("Sequence", {}).get("id") == "B":
                    middle = pair[1:-1]
                    if middle:
                        add_sep = False
                        e = middle[0].get("SpecialToken", {}).get("id")
                        if e and e in (sep, eos) and not last:
                            add_sep = True
                        if len(middle) == 2 and (e2 := middle[1].get("SpecialToken", {}).get("id")) and e2 in (sep, eos):
                            add_sep = True
                        add["sep"] = add_sep
                        if add_sep and not sep and tc:
                            tc["sep_token"] = eos


def write_special(writer, sv: dict) -> None:
    """SpecialVocab.add_to_gguf: merges, ids, add flags, chat template, in that order."""
    if sv["merges"]:
        writer.add_token_merges(sv["merges"])
    for typ, tid in sv["ids"].items():
        getattr(writer, f"add_{typ}_token_id", lambda _: None)(tid)  # cls has no GGUF key
    for typ, flag in sv["add"].items():
        getattr(writer, f"add_add_{typ}_token", lambda _: None)(flag)
    if sv["chat_template"] is not None:
        writer.add_chat_template(sv["chat_template"])
