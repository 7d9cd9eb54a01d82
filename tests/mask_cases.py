"""Inputs that break masking kernels: ties, ±0, subnormals, ±inf, NaN; and an exact-equality check that says where."""

from __future__ import annotations

import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def awkward(shape, dtype, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    flat = x.view(-1)
    n = flat.numel()
    if n >= 8:
        pick = lambda frac: torch.randperm(n, generator=g)[: max(1, int(n * frac))]  # noqa: E731
        flat[pick(0.1)] = 0.5  # exact ties
        flat[pick(0.05)] = -0.5
        flat[pick(0.05)] = 0.0
        flat[pick(0.01)] = -0.0
        flat[pick(0.01)] = 1e-40 if dtype == torch.float32 else 1e-7  # subnormal in its dtype
        flat[0], flat[n // 2], flat[-1] = float("inf"), float("-inf"), float("nan")
    return x.to(dtype)


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """torch.equal, treating NaN == NaN; on failure name how many differ and the first few."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        what,
        actual.shape,
        expected.shape,
        actual.dtype,
        expected.dtype,
    )
    a, e = actual.reshape(-1), expected.reshape(-1)
    if a.is_floating_point():
        same = (a == e) | (torch.isnan(a) & torch.isnan(e))
        same &= torch.signbit(a) == torch.signbit(e)
    else:
        same = a == e
    if not bool(same.all()):
        bad = torch.nonzero(~same).view(-1)
        first = bad[:5].tolist()
        raise AssertionError(
            f"{what}: {bad.numel()} of {a.numel()} differ; first at {first}: {a[first].tolist()} vs {e[first].tolist()}"
        )
