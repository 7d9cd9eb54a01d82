"""`surgeon eval`: perplexity of causal LMs on a text, and agreement with a reference, one layer at a time.

    with plan_eval(cfg, ["pruned/", "gptq/"]) as plan:    # opens every model (headers, skeletons), tokenizes the text
        result = run_eval(plan, progress)                 # each model streamed through the engine, layer by layer

Causal LMs: the text is tokenized once with the first model's tokenizer (its special tokens included, e.g. a BOS
at the start) and cut into windows (``data.eval_windows``: ``context`` tokens, a new window every ``stride``,
every token but the first scored once). Perplexity is ``exp`` of the mean negative log-likelihood of the scored
tokens. With a reference, the reference runs first and keeps its last hidden states; then, window by window,
both models' next-token distributions give the per-token ``KL(reference || model)`` (mean and 99th percentile)
and whether their most likely tokens agree (``top1``), as llama.cpp's ``llama-perplexity --kl-divergence`` reports.

Encoders: each non-empty paragraph of the text is a sentence; its embedding is the mean of the last hidden
states over its tokens (sentence-transformers' mean pooling), and the result is the cosine similarity of every
sentence's embedding to the reference's (mean and minimum).

Memory: one layer, plus the hidden states of every window (tokens x hidden x 4 bytes, twice), plus one window's
logits at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from modelsurgeon.ops.core.device import resolve_device
from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.gates import parse_gate
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.result import Result
from modelsurgeon.ops.core.streaming import cpu_threads
from modelsurgeon.ops.io.checkpoint import Checkpoint, open_checkpoint
from modelsurgeon.recipes.eval import GATE_KEYS, EvalConfig

from .data import Window, eval_windows, load_tokenizer, read_text, tokenize
from .engine import LayerStream
from .model import LayerwiseModel


@dataclass
class ModelScore:
    model: str
    kind: str
    tokens: int
    perplexity: float | None = None
    nll: float | None = None
    kld: float | None = None
    kld_p99: float | None = None
    top1: float | None = None
    ppl_ratio: float | None = None
    cosine: float | None = None
    cosine_min: float | None = None
    seconds: float = 0.0
    gates: list[dict] = field(default_factory=list)

    def values(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("gates", "model", "kind")}


@dataclass
class EvalResult(Result):
    text: str
    context: int | None
    stride: int | None
    tokens: int
    reference: ModelScore | None
    models: list[ModelScore]

    @property
    def ok(self) -> bool:
        return all(g["ok"] for m in self.models for g in m.gates)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["ok"] = self.ok
        return d


@dataclass
class EvalPlan:
    config: EvalConfig
    models: list[Checkpoint]
    reference: Checkpoint | None
    device: torch.device
    text: str

    def close(self) -> None:
        for ck in [*self.models, *([self.reference] if self.reference else [])]:
            ck.close()

    def __enter__(self) -> EvalPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_eval(cfg: EvalConfig, models: list[str], revision: str | None = None) -> EvalPlan:
    if not models:
        raise UsageError("no model to evaluate", "give MODEL (and more with --compare)")
    device = resolve_device(cfg.device)
    text = read_text(cfg.text)
    opened: list[Checkpoint] = []
    try:
        for m in models:
            opened.append(open_checkpoint(m, revision))
        ref = open_checkpoint(cfg.reference) if cfg.reference else None
    except BaseException:
        for ck in opened:
            ck.close()
        raise
    return EvalPlan(cfg, opened, ref, device, text)


def run_eval(plan: EvalPlan, progress: Progress = SILENT) -> EvalResult:
    cfg = plan.config
    with cpu_threads(), torch.no_grad():
        first = LayerwiseModel.open(plan.models[0], plan.device)
        kind = first.kind
        if kind == "causal":
            return _run_causal(plan, first, progress)
        if plan.reference is None:
            raise UsageError(
                f"{plan.models[0].label} is an encoder: it has no perplexity",
                "compare it with --reference REF (cosine similarity)",
            )
        return _run_encoder(plan, first, progress, cfg)


def _gates(cfg: EvalConfig, score: ModelScore) -> None:
    values = score.values()
    score.gates = [parse_gate(g, GATE_KEYS).to_dict(values) for g in cfg.require]


def _check_same_vocab(lms: list[LayerwiseModel]) -> None:
    sizes = {lm.ck.label: getattr(lm.config, "vocab_size", None) for lm in lms}
    if len(set(sizes.values())) > 1:
        raise SurgeonError(
            "the models have different vocabularies: " + ", ".join(f"{k} {v}" for k, v in sizes.items()),
            "compare models that share a tokenizer",
        )


def _windows(plan: EvalPlan, lm: LayerwiseModel) -> tuple[torch.Tensor, list[Window], int, int]:
    cfg = plan.config
    tok = load_tokenizer(plan.models[0].folder, plan.models[0].label)
    ids = tokenize(tok, plan.text, special=True)
    if cfg.max_tokens:
        ids = ids[: cfg.max_tokens]
    if ids.numel() < 2:
        raise SurgeonError(f"the text {cfg.text} has {ids.numel()} token(s); perplexity needs at least 2")
    context = cfg.context or min(2048, lm.max_context)
    if context > lm.max_context:
        raise UsageError(f"--context {context} is longer than the model's context ({lm.max_context} tokens)")
    stride = cfg.stride or max(1, context // 2)
    if stride > context:
        raise UsageError(f"--stride {stride} is longer than the context {context}")
    return ids, eval_windows(ids.numel(), context, stride), context, stride


def _batches(ids: torch.Tensor, windows: list[Window], size: int) -> list[tuple[list[Window], torch.Tensor]]:
    """Windows of equal length grouped into batches of at most ``size``."""
    out, cur = [], []
    for w in windows:
        if cur and (len(cur) == size or (cur[0].end - cur[0].begin) != (w.end - w.begin)):
            out.append(cur)
            cur = []
        cur.append(w)
    if cur:
        out.append(cur)
    return [(ws, torch.stack([ids[w.begin : w.end] for w in ws])) for ws in out]


def _last_hidden(lm: LayerwiseModel, batches, progress: Progress, label: str) -> list[torch.Tensor]:
    stream = LayerStream(lm, [b for _, b in batches], None, progress, description=f"eval {label}")
    return stream.hidden_states()


def _log_probs(lm: LayerwiseModel, ws: list[Window], ids_b: torch.Tensor, last: torch.Tensor):
    """Per window: (log-probabilities at the positions that predict its scored tokens (n, V), the targets (n,))."""
    logits = lm.finish(ids_b, last.to(lm.device)).float()
    out = []
    for k, w in enumerate(ws):
        pos = torch.arange(w.score_from - 1, w.end - 1) - w.begin
        out.append((torch.log_softmax(logits[k, pos], dim=-1), ids_b[k, pos + 1].to(lm.device)))
    return out


def _run_causal(plan: EvalPlan, first: LayerwiseModel, progress: Progress) -> EvalResult:
    import time

    cfg = plan.config
    ids, windows, context, stride = _windows(plan, first)
    batches = _batches(ids, windows, cfg.batch_size)
    ref_lm, ref_last, ref_score = None, None, None
    if plan.reference is not None:
        ref_lm = LayerwiseModel.open(plan.reference, plan.device)
        if ref_lm.kind != "causal":
            raise SurgeonError(f"the reference {plan.reference.label} is not a causal LM")
        _check_same_vocab([first, ref_lm])
        t0 = time.perf_counter()
        ref_last = _last_hidden(ref_lm, batches, progress, plan.reference.label)
        nll, n = 0.0, 0
        for (ws, ids_b), last in zip(batches, ref_last):
            for lp, tgt in _log_probs(ref_lm, ws, ids_b, last):
                nll -= float(lp.gather(1, tgt[:, None]).sum())
                n += tgt.numel()
        ref_score = ModelScore(plan.reference.label, "causal", n, math.exp(nll / n), nll / n, seconds=time.perf_counter() - t0)
    scores = []
    for k, ck in enumerate(plan.models):
        lm = first if k == 0 else LayerwiseModel.open(ck, plan.device)
        if lm.kind != "causal":
            raise SurgeonError(f"{ck.label} is not a causal LM, unlike {plan.models[0].label}")
        _check_same_vocab([first, lm])
        t0 = time.perf_counter()
        lasts = _last_hidden(lm, batches, progress, ck.label)
        nll, n, kls, agree = 0.0, 0, [], 0
        for b, ((ws, ids_b), last) in enumerate(zip(batches, lasts)):
            mine = _log_probs(lm, ws, ids_b, last)
            theirs = _log_probs(ref_lm, ws, ids_b, ref_last[b]) if ref_lm is not None else [None] * len(mine)
            for (lp, tgt), ref in zip(mine, theirs):
                nll -= float(lp.gather(1, tgt[:, None]).sum())
                n += tgt.numel()
                if ref is not None:
                    rlp = ref[0]
                    kls.append((rlp.exp() * (rlp - lp)).sum(-1).clamp_min(0).cpu())
                    agree += int((rlp.argmax(-1) == lp.argmax(-1)).sum())
        score = ModelScore(ck.label, "causal", n, math.exp(nll / n), nll / n, seconds=time.perf_counter() - t0)
        if ref_score is not None:
            kl = torch.cat(kls).double()
            score.kld = float(kl.mean())
            score.kld_p99 = float(torch.quantile(kl, 0.99)) if kl.numel() else None
            score.top1 = agree / n
            score.ppl_ratio = score.perplexity / ref_score.perplexity
        _gates(cfg, score)
        scores.append(score)
        lm.close()
        del lasts
    return EvalResult(cfg.text, context, stride, int(ids.numel()), ref_score, scores)


def _sentences(text: str) -> list[str]:
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return [" ".join(p.split()) for p in paras if p.strip()]


def _embeddings(lm: LayerwiseModel, tok, sentences: list[str], cfg: EvalConfig, progress, label) -> torch.Tensor:
    from .model import warnings_off

    with warnings_off():
        enc = tok(sentences, padding=True, truncation=True, max_length=min(512, lm.max_context), return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    b = cfg.batch_size
    stream = LayerStream(lm, [], None, progress, description=f"eval {label}")
    xs, calls = [], []
    for i in range(0, ids.shape[0], b):
        x, kw = lm.embed(ids[i : i + b], mask[i : i + b])
        xs.append(x)
        calls.append(kw)
    progress.start(stream.description, lm.num_layers, "layers")
    for li in range(lm.num_layers):
        with lm.layer(li) as layer:
            ctx = stream.context(li, layer, xs, calls)
            xs = stream.forward(ctx)
        progress.advance(1)
    out = []
    for k, i in enumerate(range(0, ids.shape[0], b)):
        last = lm.finish(ids[i : i + b], xs[k], mask[i : i + b]).float()
        m = mask[i : i + b].to(last.device).unsqueeze(-1).float()
        out.append(((last * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
    return torch.cat(out)


def _run_encoder(plan: EvalPlan, first: LayerwiseModel, progress: Progress, cfg: EvalConfig) -> EvalResult:
    import time

    sentences = _sentences(plan.text)
    if not sentences:
        raise SurgeonError(f"the text {cfg.text} has no sentence to embed")
    tok = load_tokenizer(plan.models[0].folder, plan.models[0].label)
    ref_lm = LayerwiseModel.open(plan.reference, plan.device)
    _check_same_vocab([first, ref_lm])
    t0 = time.perf_counter()
    ref = _embeddings(ref_lm, tok, sentences, cfg, progress, plan.reference.label)
    ref_score = ModelScore(plan.reference.label, ref_lm.kind, len(sentences), seconds=time.perf_counter() - t0)
    scores = []
    for k, ck in enumerate(plan.models):
        lm = first if k == 0 else LayerwiseModel.open(ck, plan.device)
        _check_same_vocab([first, lm])
        t0 = time.perf_counter()
        emb = _embeddings(lm, tok, sentences, cfg, progress, ck.label)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        score = ModelScore(ck.label, lm.kind, len(sentences), cosine=float(cos.mean()), cosine_min=float(cos.min()))
        score.seconds = time.perf_counter() - t0
        _gates(cfg, score)
        scores.append(score)
    return EvalResult(cfg.text, None, None, len(sentences), ref_score, scores)
