"""``text:PATH``: UTF-8 text for a causal LM MODEL: tokenised with MODEL's tokenizer, cut into blocks of
``--max-tokens`` (at most the model's context); the last 10 % of the blocks are held out (all are trained on
with fewer than 10). Loss = next-token cross-entropy, metric = exp(-loss) = 1 / perplexity (so 90 % of the
baseline means a perplexity within 1/0.9 of full fine-tuning's)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from modelsurgeon.ops.core.errors import SurgeonError

from .base import Batch, Task, logits, task_file


@dataclass
class LanguageModelTask(Task):
    holds: ClassVar[str] = "text"
    needs_tokenizer: ClassVar[bool] = True

    problem: str = "lm"
    raw_text: str = ""

    @property
    def metric_name(self) -> str:
        return "token_prob"

    def batch(self, examples: dict) -> Batch:
        kw = {"input_ids": examples["input_ids"]}
        labels = examples["input_ids"]  # a causal LM predicts its own tokens; padding is ignored
        if "attention_mask" in examples:
            kw["attention_mask"] = examples["attention_mask"]
            labels = labels.masked_fill(examples["attention_mask"] == 0, -100)
        return Batch((), kw, labels)

    def loss(self, output, target) -> torch.Tensor:
        out = logits(output)
        return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).float(), target[:, 1:].reshape(-1), ignore_index=-100)

    def evaluate(self, forward: Callable[[Batch], object], batch_size: int) -> tuple[float, float]:
        nll, count = 0.0, 0
        for b in self.batches(self.eval_name, batch_size):
            s, c = _nll_sum(logits(forward(b)), b.target)
            nll, count = nll + s, count + c
        loss = nll / max(count, 1)
        return math.exp(-loss), loss

    def transformers_class(self) -> tuple[str, dict]:
        return "AutoModelForCausalLM", {}

    def tokenize(self, tokenizer, max_len: int, model_max: int | None = None) -> None:
        block = min(max_len, model_max or max_len)
        ids = tokenizer(self.raw_text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            raise SurgeonError(f"task {self.spec}: the text gives {len(ids)} token(s)", "give a longer text")
        blocks = [ids[i : i + block] for i in range(0, len(ids), block)]
        if len(blocks) > 1 and len(blocks[-1]) < 2:
            blocks.pop()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(b) for b in blocks)
        input_ids = torch.full((len(blocks), width), pad, dtype=torch.long)
        mask = torch.zeros((len(blocks), width), dtype=torch.long)
        for i, b in enumerate(blocks):
            input_ids[i, : len(b)] = torch.tensor(b)
            mask[i, : len(b)] = 1
        data = {"input_ids": input_ids, "attention_mask": mask}
        if len(blocks) >= 10:
            n_eval = max(1, len(blocks) // 10)
            self.train = {k: v[:-n_eval] for k, v in data.items()}
            self.test = {k: v[-n_eval:] for k, v in data.items()}
            self.eval_split = f"last {n_eval} of {len(blocks)} blocks of {block} tokens"
        else:
            self.train, self.test = data, {}
            self.eval_split = f"train ({len(blocks)} blocks of {block} tokens: too few to hold some out)"


def _nll_sum(logits, labels) -> tuple[float, int]:
    tgt = labels[:, 1:].reshape(-1)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tgt, ignore_index=-100, reduction="sum")
    return float(nll), int((tgt != -100).sum())


def load(spec: str, arg: str | None) -> LanguageModelTask:
    p = task_file(spec, arg)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SurgeonError(f"task {spec} cannot be loaded: {e}") from None
    if not text.strip():
        raise SurgeonError(f"task {spec} cannot be loaded: {p.name} is empty")
    # a pretrained LM starts far above zero: count the fraction of the improvement over theta_0 instead;
    # 128 blocks of logits over a real vocabulary would not fit, hence batch 8
    return LanguageModelTask(spec, raw_text=text, defaults={"threshold_from": "init", "batch_size": 8})
