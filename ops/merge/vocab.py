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
