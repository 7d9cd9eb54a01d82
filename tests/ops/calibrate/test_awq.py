"""AWQ: folding the scales keeps the block's function, the search never does worse than no scaling (ratio 0 is
among the candidates), clipping never raises the clipped error, and a model without a mapping is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelsurgeon.ops.calibrate import awq
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.quantize.grid import grid_for
from modelsurgeon.ops.quantize.schemes import QuantSpec, get_scheme


class _Norm(nn.Module):
    def __init__(self, n, offset=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n) + 0.5)
        self.offset = offset

    def forward(self, x):
        return x * (self.offset + self.weight)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_folding_keeps_the_function(offset):
    torch.manual_seed(0)
    norm, a, b = _Norm(16, offset), nn.Linear(16, 8), nn.Linear(16, 4)
    up, down = nn.Linear(16, 32), nn.Linear(32, 16)
    x = torch.randn(5, 16)
    with torch.no_grad():
        before = (a(norm(x)), b(norm(x)), down(up(x)))
        awq.apply_scale(norm, [a, b], torch.rand(16) + 0.1, offset)
        awq.apply_scale(up, [down], torch.rand(32) + 0.1)
        after = (a(norm(x)), b(norm(x)), down(up(x)))
    for u, v in zip(before, after):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


def test_search_and_clip_lower_the_error():
    torch.manual_seed(1)
    spec = QuantSpec(get_scheme("w4a16"), 32, True)
    rt = grid_for(spec, torch.float32).roundtrip
    lin = nn.Linear(64, 48, bias=False)
    x = torch.randn(256, 64) * torch.exp(2 * torch.randn(64))  # a few loud channels, as in LLM activations
    with torch.no_grad():
        ref = lin(x)
        plain = float((nn.functional.linear(x, rt(lin.weight)) - ref).pow(2).mean())

        def run():
            return float((lin(x) - ref).pow(2).mean())

        s, best, hist = awq.search_scale(x.abs().mean(0), [lin], run, rt)
    assert hist[0] == pytest.approx(plain, rel=1e-5) and best <= plain and len(hist) == 20  # ratio 0 = no scaling
    w = lin.weight.detach().clone()
    max_val = awq.auto_clip(w, x, 32, rt)
    assert max_val.shape == (48, 2) and (max_val <= w.abs().reshape(48, 2, 32).amax(-1) + 1e-6).all()
    clipped = nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        clipped.weight.copy_(w)
    awq.apply_clip(clipped, max_val)
    err = lambda W: float((x @ rt(W).T - x @ w.T).pow(2).mean())  # noqa: E731
    assert err(clipped.weight.detach()) <= err(w) + 1e-6


def test_a_model_without_a_mapping_is_refused():
    with pytest.raises(SurgeonError, match="no layer mapping for model_type 'gpt2'.*use --method gptq"):
        awq.mappings_for("gpt2", "m")
    assert set(awq.MAPPINGS) >= {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"}
