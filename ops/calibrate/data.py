"""Calibration and evaluation text: reading it, tokenizing it once, and cutting it into sequences.

Calibration (``calibration_ids``): N windows of L tokens at seeded random offsets in the tokenized text, as the
official Wanda/SparseGPT/GPTQ code samples C4 (``get_c4``: a random start in a long document, seed 0). A file is
plain text or JSONL with a ``text`` field per line (documents are joined with a blank line). Without a file the
text is ``BUILTIN``: the Python language reference that every CPython ships (``pydoc_data.topics``, ~465 KB of
English prose and code), so nothing is downloaded; the README gives what it costs against a real text.

Evaluation (``eval_windows``): the sliding window of Hugging Face's perplexity guide. Windows of ``context``
tokens start every ``stride`` tokens; each scores only the tokens no earlier window scored, so every token but
the first is scored exactly once, with at least ``context - stride`` tokens of history (all of it, in the first
window).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import SurgeonError

BUILTIN = "builtin:python-reference"


def read_text(path: str | Path) -> str:
    """A calibration or evaluation file's text: plain text, or JSONL whose lines hold a ``text`` field."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SurgeonError(f"text file {p} does not exist", "check the path") from None
    except IsADirectoryError:
        raise SurgeonError(f"{p} is a folder, not a text file", "give a .txt or .jsonl file") from None
    except UnicodeDecodeError:
        raise SurgeonError(f"{p} is not UTF-8 text", "give a plain-text or JSONL file") from None
    except OSError as e:
        raise SurgeonError(f"cannot read {p}: {e.strerror or e}") from None
    if p.suffix.lower() in (".jsonl", ".ndjson") or _looks_like_jsonl(raw):
        return _jsonl_text(raw, p)
    if not raw.strip():
        raise SurgeonError(f"{p} is empty", "give a file with text (plain text, or JSONL with a 'text' field)")
    return raw


def _looks_like_jsonl(raw: str) -> bool:
    first = next((line for line in raw.splitlines() if line.strip()), "")
    if not first.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _jsonl_text(raw: str, p: Path) -> str:
    docs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SurgeonError(f"{p} line {n} is not JSON: {e.msg}", "JSONL needs one JSON object per line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise SurgeonError(f"{p} line {n} has no 'text' string", "each JSONL line needs a 'text' field")
        if obj["text"].strip():
            docs.append(obj["text"])
    if not docs:
        raise SurgeonError(f"{p} holds no text", "give a file with text (plain text, or JSONL with a 'text' field)")
    return "\n\n".join(docs)


def builtin_text() -> str:
    """The default calibration text: CPython's language reference topics, in a fixed order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise SurgeonError(
            "this Python lacks pydoc_data, the built-in calibration text", "pass --calib FILE with some text"
        ) from None
    return "\n\n".join(topics[k] for k in sorted(topics))


def load_tokenizer(folder: Path, label: str):
    from transformers import AutoTokenizer

    from .model import warnings_off

    try:
        with warnings_off():
            return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise SurgeonError(
            f"cannot load the tokenizer of {label}: {str(e).splitlines()[0][:200]}",
            "the model folder needs its tokenizer files (tokenizer.json or tokenizer.model and tokenizer_config.json)",
        ) from None


def tokenize(tokenizer, text: str, special: bool = True) -> torch.Tensor:
    """The text's token ids, once, as a 1-D int64 tensor (long texts are tokenized whole, without truncation)."""
    from .model import warnings_off

    with warnings_off():
        ids = tokenizer(text, add_special_tokens=special, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def calibration_ids(ids: torch.Tensor, samples: int, seqlen: int, seed: int, source: str) -> torch.Tensor:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets: (samples, seqlen) int64."""
    total = ids.numel()
    if total < seqlen:
        raise SurgeonError(
            f"the calibration text ({source}) has {total} tokens, shorter than one sequence of {seqlen}",
            "give a longer --calib file or a smaller --calib-seqlen",
        )
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, total - seqlen + 1, (samples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` of the text; the model's predictions for ``[score_from, end)`` are scored."""

    begin: int
    end: int
    score_from: int


def eval_windows(total: int, context: int, stride: int) -> list[Window]:
    """The sliding windows over ``total`` tokens (every token after the first scored exactly once)."""
    out, prev_end = [], 0
    for begin in range(0, max(total - 1, 1), stride):
        end = min(begin + context, total)
        out.append(Window(begin, end, max(begin + 1, prev_end)))
        prev_end = end
        if end == total:
            break
    return out
