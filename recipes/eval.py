"""`surgeon eval` settings: the text, the models, the window, the gates. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from modelsurgeon.ops.core.errors import UsageError
from modelsurgeon.ops.core.gates import parse_gate

from .base import Config, check_int

# every number a gate can test, and what it means
GATE_KEYS = {
    "perplexity": "exp(mean negative log-likelihood per scored token)",
    "nll": "mean negative log-likelihood per scored token (nats)",
    "kld": "mean KL(reference || model) per token (nats), needs --reference",
    "kld_p99": "99th percentile of the per-token KL divergence, needs --reference",
    "top1": "share of tokens whose most likely next token equals the reference's, needs --reference",
    "ppl_ratio": "perplexity / the reference's perplexity, needs --reference",
    "cosine": "encoders: mean cosine similarity of sentence embeddings to the reference's",
    "cosine_min": "encoders: the lowest sentence cosine similarity",
    "tokens": "tokens scored",
}
NEEDS_REFERENCE = ("kld", "kld_p99", "top1", "ppl_ratio", "cosine", "cosine_min")


@dataclass(frozen=True)
class EvalConfig(Config):
    KIND = "eval"
    VERSION = 1

    text: str | None = None  # the evaluation text (plain text or JSONL with a `text` field)
    reference: str | None = None  # a model to compare with, token by token (KL, top-1) or sentence by sentence
    context: int | None = None  # window length in tokens; None: min(2048, the model's context)
    stride: int | None = None  # tokens between window starts; None: context / 2
    max_tokens: int | None = None  # evaluate the first N tokens of the text only
    batch_size: int = 4  # windows run through a layer at once
    require: tuple[str, ...] = ()  # gates: KEY OP NUMBER, checked for every model
    device: str = "auto"

    def validate(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise UsageError("no evaluation text given", "pass --text FILE (plain text, or JSONL with a 'text' field)")
        if self.context is not None:
            check_int(self.context, "--context", minimum=2)
        if self.stride is not None:
            check_int(self.stride, "--stride", minimum=1)
            if self.context is not None and self.stride > self.context:
                raise UsageError(f"--stride {self.stride} is longer than --context {self.context}", "windows would skip tokens")
        if self.max_tokens is not None:
            check_int(self.max_tokens, "--max-tokens", minimum=2)
        check_int(self.batch_size, "--batch-size", minimum=1)
        req = self.require
        if isinstance(req, str):
            req = (req,)
        self._set("require", tuple(req))
        needs = {} if self.reference else {k: "--reference REF" for k in NEEDS_REFERENCE}
        for g in self.require:
            parse_gate(g, GATE_KEYS, needs=needs)
