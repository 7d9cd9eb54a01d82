"""Aligning vocabulary-indexed tensors (embeddings, LM heads) of models whose tokenizers differ.

With ``tokenizer_source: base`` (or a model), the output keeps that model's tokenizer and its embedding
rows, padding included (mergekit's rebuilt tokenizers drop padded rows: its issue #425). Every other
model's rows are reordered by token text to line up with it. A model that lacks a token gets, for that
row, the base model's embedding when the base has the token, otherwise the embedding of the only model
that has it, otherwise the mean over the models that have it (mergekit's rule); so a missing token
never drags a merge toward zero.

Vocabularies are read from tokenizer.json (BPE, WordPiece, WordLevel and Unigram models, plus added
tokens), else vocab.json (+ added_tokens.json), else vocab.txt; transformers is not needed.

Planning (``plan_alignment``) gives each vocabulary-indexed job its row maps; without a tokenizer
source, vocabularies that differ in size are a problem that says how to align them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modelsurgeon.ops.core.errors import CheckpointError, SurgeonError

if TYPE_CHECKING:
    from .jobs import JobBuilder
    from .layout import Layout


def read_vocab(folder: Path) -> dict[str, int]:
    """token text -> id, from the tokenizer files in ``folder``."""
    tj = folder / "tokenizer.json"
    try:
        if tj.is_file():
            data = json.loads(tj.read_text())
            model = data.get("model") or {}
            raw = model.get("vocab")
            if isinstance(raw, dict):
                vocab = {str(k): int(v) for k, v in raw.items()}
            elif isinstance(raw, list):  # Unigram: [[piece, score], ...], id = position
                vocab = {str(e[0]): i for i, e in enumerate(raw)}
            else:
                raise CheckpointError(f"{tj} has no vocabulary in model.vocab")
            for t in data.get("added_tokens") or []:
                vocab[str(t["content"])] = int(t["id"])
            return vocab
        vj = folder / "vocab.json"
        if vj.is_file():
            vocab = {str(k): int(v) for k, v in json.loads(vj.read_text()).items()}
            at = folder / "added_tokens.json"
            if at.is_file():
                vocab.update({str(k): int(v) for k, v in json.loads(at.read_text()).items()})
            return vocab
        vt = folder / "vocab.txt"
        if vt.is_file():
            return {line.rstrip("\n"): i for i, line in enumerate(vt.read_text(encoding="utf-8").splitlines())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read the vocabulary in {folder}: {e}") from None
    raise CheckpointError(
        f"no readable vocabulary in {folder}",
        "tokenizer_source needs tokenizer.json, vocab.json or vocab.txt beside each model",
    )


def row_maps(target_vocab: dict[str, int], target_rows: int, vocabs: list[dict[str, int]], rows: list[int]) -> list[torch.Tensor]:
    """For each model, the row of its tensor that feeds each output row (-1: the model lacks that token).

    Output rows without a token in the target vocabulary (padding) map to the same row index in every
    model that has that many rows.
    """
    has_token = torch.zeros(target_rows, dtype=torch.bool)
    for i in target_vocab.values():
        if 0 <= i < target_rows:
            has_token[i] = True
    maps = []
    for vocab, n in zip(vocabs, rows):
        idx = torch.full((target_rows,), -1, dtype=torch.int64)
        for tok, i in target_vocab.items():
            j = vocab.get(tok)
            if 0 <= i < target_rows and j is not None and 0 <= j < n:
                idx[i] = j
        pad = torch.arange(target_rows)
        pad_rows = (~has_token) & (pad < n)
        idx[pad_rows] = pad[pad_rows]
        maps.append(idx)
    return maps


def is_identity(idx: torch.Tensor, rows: int) -> bool:
    return idx.numel() == rows and bool((idx == torch.arange(rows)).all())


def align_rows(tensors: list[torch.Tensor], maps: list[torch.Tensor], base_pos: int | None) -> list[torch.Tensor]:
    """Reorder each tensor's rows by its map, filling rows a model lacks (see the module docstring)."""
    present = torch.stack([m >= 0 for m in maps])  # [models, rows]
    gathered = [t[m.clamp(min=0).to(t.device)] for t, m in zip(tensors, maps)]
    wd = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    shape = gathered[0].shape
    count = present.sum(0)
    if bool(present.all()):
        return gathered
    flat = [g.reshape(shape[0], -1).to(wd) for g in gathered]
    pres = present.to(flat[0].device)
    total = sum(f * p.unsqueeze(1).to(wd) for f, p in zip(flat, pres))
    mean = total / count.clamp(min=1).unsqueeze(1).to(total.device, wd)
    if base_pos is not None:
        fill = torch.where(pres[base_pos].unsqueeze(1), flat[base_pos], mean)
    else:
        fill = mean
    out = []
    for f, p, t in zip(flat, pres, tensors):
        out.append(torch.where(p.unsqueeze(1), f, fill).reshape(shape).to(t.dtype if t.dtype.is_floating_point else wd))
    return out


def plan_alignment(b: JobBuilder, layout: Layout) -> None:
    """Give every vocabulary-indexed job the row maps that align it to the tokenizer model's vocabulary
    (and its shape that many rows); refuse vocabularies of different sizes without a tokenizer source."""
    models = b.models
    r = b.recipe
    if r.tokenizer_source == "union" or r.tokens or r.pad_to_multiple_of:
        build_tokenizer(b, layout)
        return
    if b.recipe.tokenizer_source is None:
        for job in b.jobs:
            if job.name in b.vocab_tensors:
                desc = ", ".join(f"{models[s.model].label} {models.info(s).shape[0]}" for s in job.sources)
                b.problems.add(
                    f"the vocabularies differ in size ({desc} rows); add tokenizer_source: base (or a model) to the recipe, "
                    "or --tokenizer-source, to align rows by token",
                    job.name,
                )
        return
    target = layout.tokenizer_model
    vocabs: dict[int, dict[str, int]] = {}
    for i, m in enumerate(models):
        try:
            vocabs[i] = read_vocab(m.ck.folder)
        except SurgeonError as e:
            b.problems.add(f"{m.label}: {e}")
    if b.problems:
        return
    target_vs = (models.ck(target).config or {}).get("vocab_size")
    for job in b.jobs:
        if job.copy:
            continue
        shapes = [tuple(models.info(s).shape) for s in job.sources]
        if job.name not in b.vocab_tensors and not all(
            sh and sh[0] == (models.ck(s.model).config or {}).get("vocab_size") for sh, s in zip(shapes, job.sources)
        ):
            continue
        tname = models.find(target, job.name)
        if tname is None:
            continue
        t_rows = models.ck(target).info(tname).shape[0]
        maps = row_maps(vocabs[target], t_rows, [vocabs[s.model] for s in job.sources], [sh[0] for sh in shapes])
        if all(is_identity(mp, sh[0]) for mp, sh in zip(maps, shapes)):
            continue
        job.row_maps = maps
        job.shape = (t_rows, *job.shape[1:])
        b.vocab_tensors.discard(job.name)
        if isinstance(target_vs, int):
            layout.config_updates["vocab_size"] = target_vs


# --------------------------------------------------------------------------------------------
# A built output tokenizer: tokenizer_source: union, tokenizer.tokens, tokenizer.pad_to_multiple_of
#
# As mergekit builds it: the source tokenizer (the base's, or the named model's), then for union every
# other model's tokens it lacks (regular tokens, then added tokens with their settings), then the tokens
# named under ``tokens:``. The embedding rows of each model are laid out in that vocabulary: a model's own
# row where it has the token (unless ``force``), otherwise the token's default: its ``source`` (a model's
# row for this token or another, or zeros), else the only model that has it, else the base's, else the
# mean of the models that have it (zeros when none has it). Rows added by ``pad_to_multiple_of`` get each
# model's mean token row. mergekit orders the new tokens by a hash map's order, which changes from run to
# run; here they come in model order, then in each model's id order, so the output is reproducible.
# transformers reads and writes the tokenizer files (nothing else in the merge needs it).

SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class VocabMap:
    """How one vocabulary-indexed tensor of every source (job order) is laid out in the output vocabulary."""

    def __init__(self, rows: int, n_tokens: int, maps: list[torch.Tensor], fills: dict[int, tuple], force: set[int]):
        self.rows, self.n_tokens, self.maps, self.fills, self.force = rows, n_tokens, maps, fills, force

    def apply(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        wd = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        shape = tensors[0].shape[1:]
        defaults: dict[int, torch.Tensor] = {}
        for row, (kind, pos, src_row) in self.fills.items():
            if kind == "zero":
                defaults[row] = torch.zeros(shape, dtype=wd)
            elif kind == "row":
                defaults[row] = tensors[pos][src_row].to(wd)
            else:  # mean over the models that have it
                have = [tensors[i][int(m[row])].to(wd) for i, m in enumerate(self.maps) if int(m[row]) >= 0]
                defaults[row] = torch.stack(have).mean(0) if have else torch.zeros(shape, dtype=wd)
        out = []
        for t, m in zip(tensors, self.maps):
            new = torch.zeros((self.rows, *shape), dtype=wd)
            own = m >= 0
            if self.force:
                own[list(self.force)] = False
            idx = own.nonzero().reshape(-1)
            new[idx] = t[m[idx]].to(wd)
            for row, d in defaults.items():
                if not bool(own[row]):
                    new[row] = d
            if self.rows > self.n_tokens:
                new[self.n_tokens :] = new[: self.n_tokens].mean(0)
            out.append(new)
        return out


def _load_tokenizer(folder: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SurgeonError(
            "building a tokenizer (tokenizer_source: union, tokenizer.tokens) needs transformers", "pip install transformers"
        ) from None
    return AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)


def _special_disagreements(labels: list[str], toks: list) -> list[str]:
    out = []
    for role in SPECIAL_ROLES:
        seen = {lab: getattr(t, role, None) for lab, t in zip(labels, toks) if getattr(t, role, None) is not None}
        if len(set(seen.values())) > 1:
            out.append(f"{role} is " + ", ".join(f"{v!r} in {lab}" for lab, v in seen.items()))
    flags: dict[str, dict[str, bool]] = {}
    for lab, t in zip(labels, toks):
        for info in t.added_tokens_decoder.values():
            flags.setdefault(info.content, {})[lab] = bool(info.special)
    for content, by in flags.items():
        if len(set(by.values())) > 1:
            out.append(
                f"{content!r} is special in {', '.join(k for k, v in by.items() if v)} but not in {', '.join(k for k, v in by.items() if not v)}"
            )
    return out


def build_tokenizer(b: JobBuilder, layout: Layout) -> None:
    """Build the output tokenizer and give every vocabulary-indexed job its VocabMap (problems to ``b``)."""
    r, models = b.recipe, b.models
    src = r.tokenizer_source or "base"
    labels = [m.label for m in models]
    try:
        toks = [_load_tokenizer(m.ck.folder) for m in models]
    except SurgeonError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for unreadable tokenizer files
        b.problems.add(f"cannot read the tokenizers for tokenizer_source {src}: {e}")
        return
    sizes = [(m.ck.config or {}).get("vocab_size") for m in models]
    for lab, t, vs in zip(labels, toks, sizes):
        beyond = [tok for tok, i in t.get_vocab().items() if isinstance(vs, int) and i >= vs]
        if beyond:
            b.problems.add(
                f"{lab}: its tokenizer has {len(beyond)} token(s) beyond vocab_size {vs} (e.g. {beyond[0]!r}); resize its embeddings first"
            )
    src_idx = layout.tokenizer_model
    if src == "union":
        bad = _special_disagreements(labels, toks)
        if bad:
            b.problems.add(
                "tokenizer_source: union: the models' tokenizers disagree on special tokens: "
                + "; ".join(bad)
                + "; keep one tokenizer with tokenizer_source: base (or a model's name)"
            )
    for tname, setting in r.tokens.items():
        s = setting.source
        if s is None or s.kind == "zero":
            continue
        pos = next((i for i, m in enumerate(models) if m.ref.same_as(s.model) or m.ref.model == str(s.model)), None)
        if pos is None:
            b.problems.add(
                f"tokenizer.tokens.{tname}: source model {s.model} is not one of the merged models; use one of: {', '.join(labels)}"
            )
        elif s.kind == "model_token" and s.token is not None and s.token not in toks[pos].get_vocab():
            b.problems.add(f"tokenizer.tokens.{tname}: {s.model} has no token {s.token!r}")
        elif s.kind == "model_token" and s.token_id is not None and isinstance(sizes[pos], int) and s.token_id >= sizes[pos]:
            b.problems.add(f"tokenizer.tokens.{tname}: token_id {s.token_id} is beyond {s.model}'s {sizes[pos]} rows")
        elif s.kind == "model" and tname not in toks[pos].get_vocab():
            b.problems.add(
                f"tokenizer.tokens.{tname}: source {s.model} has no token {tname!r}; use kind: model_token to take another token's row"
            )
    if b.problems:
        return
    import copy

    out_tok = copy.deepcopy(toks[src_idx])
    if src == "union":
        have = set(out_tok.get_vocab())
        for t in toks:
            added = {info.content for info in t.added_tokens_decoder.values()}
            regular = sorted(((idx, tok) for tok, idx in t.get_vocab().items() if tok not in added), key=lambda x: x[0])
            for _, tok in regular:
                if tok not in have:
                    out_tok.add_tokens(tok)
                    have.add(tok)
        for t in toks:
            for _, info in sorted(t.added_tokens_decoder.items()):
                if info.content not in have:
                    out_tok.add_tokens(info)
                    have.add(info.content)
    have = set(out_tok.get_vocab())
    for tname in r.tokens:
        if tname not in have:
            out_tok.add_tokens(tname)
            have.add(tname)
    vocab = out_tok.get_vocab()
    n_tokens = len(vocab)
    rows = n_tokens
    if r.pad_to_multiple_of and rows % r.pad_to_multiple_of:
        rows += r.pad_to_multiple_of - rows % r.pad_to_multiple_of
    layout.tokenizer = out_tok
    layout.config_updates["vocab_size"] = rows
    model_vocabs = [t.get_vocab() for t in toks]
    for job in b.jobs:
        if job.copy:
            continue
        shapes = [tuple(models.info(s).shape) for s in job.sources]
        if not all(sh and isinstance(sizes[s.model], int) and sh[0] == sizes[s.model] for sh, s in zip(shapes, job.sources)):
            continue
        job.vocab = _vocab_map(r, job, models, model_vocabs, vocab, rows, n_tokens)
        job.shape = (rows, *job.shape[1:])
        b.vocab_tensors.discard(job.name)


def _vocab_map(r, job, models, model_vocabs, vocab: dict[str, int], rows: int, n_tokens: int) -> VocabMap:
    srcs = job.sources
    maps = []
    for s in srcs:
        mv, n = model_vocabs[s.model], models.info(s).shape[0]
        m = torch.full((rows,), -1, dtype=torch.int64)
        for tok, i in vocab.items():
            j = mv.get(tok)
            if j is not None and j < n:
                m[i] = j
        maps.append(m)
    base_pos = 0 if job.base is not None else None
    fills: dict[int, tuple] = {}
    force: set[int] = set()
    present = torch.stack([m >= 0 for m in maps])
    counts = present.sum(0)
    for tok, i in vocab.items():
        setting = r.tokens.get(tok)
        if setting is not None and setting.force:
            force.add(i)
        if not (setting is not None and setting.force) and int(counts[i]) == len(srcs):
            continue
        if setting is not None and setting.source is not None:
            s = setting.source
            if s.kind == "zero":
                fills[i] = ("zero", -1, -1)
                continue
            pos = next(
                p
                for p, sr in enumerate(srcs)
                if models[sr.model].ref.same_as(s.model) or models[sr.model].ref.model == str(s.model)
            )
            if s.kind == "model":
                fills[i] = ("row", pos, int(maps[pos][i]))
            else:
                row = s.token_id if s.token_id is not None else model_vocabs[srcs[pos].model][s.token]
                fills[i] = ("row", pos, row)
            continue
        n = int(counts[i])
        if n == 1:
            p = int(present[:, i].nonzero()[0])
            fills[i] = ("row", p, int(maps[p][i]))
        elif n == 0:
            fills[i] = ("zero", -1, -1)
        elif base_pos is not None and bool(present[base_pos, i]):
            fills[i] = ("row", base_pos, int(maps[base_pos][i]))
        else:
            fills[i] = ("mean", -1, -1)
    return VocabMap(rows, n_tokens, maps, fills, force)


def model_chat_template(folder: Path) -> str | None:
    """A model's chat template: chat_template.jinja, else tokenizer_config.json's (the "default" one of a dict)."""
    jf = folder / "chat_template.jinja"
    try:
        if jf.is_file():
            return jf.read_text()
        tc = folder / "tokenizer_config.json"
        if tc.is_file():
            t = json.loads(tc.read_text()).get("chat_template")
            if isinstance(t, list):  # [{"name": ..., "template": ...}]
                t = next((e.get("template") for e in t if isinstance(e, dict) and e.get("name") == "default"), None)
            if isinstance(t, dict):
                t = t.get("default")
            return t if isinstance(t, str) and t.strip() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def plan_chat_template(b: JobBuilder, layout: Layout) -> None:
    """The output's chat template: a named one, inline Jinja, or with ``auto`` the template most of the
    models share (mergekit's rule; none when no model has one)."""
    from collections import Counter

    from modelsurgeon.recipes.merge import CHAT_TEMPLATES, chat_template_text, is_template_name

    chat = b.recipe.chat_template
    if not chat:
        return
    if chat == "auto":
        found = [t.strip() for m in b.models if (t := model_chat_template(m.ck.folder))]
        layout.chat_template = Counter(found).most_common(1)[0][0] if found else None
    elif is_template_name(chat):
        if chat not in CHAT_TEMPLATES:
            b.problems.add(f"unknown chat template {chat!r}; use auto, Jinja text, or one of: {', '.join(CHAT_TEMPLATES)}")
            return
        layout.chat_template = chat_template_text(chat)
    else:
        layout.chat_template = chat
