"""GPTQ on one linear equals a line-by-line transcription of IST-DASLab/gptq ``fasterquant``, run with the same
quantizer (our grids put the official ``find_params``/``quantize`` onto the format's own grid); with H = I it
is round-to-nearest, byte for byte."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.calibrate.gptq import gptq_quantize
from modelsurgeon.ops.quantize.grid import grid_for
from modelsurgeon.ops.quantize.schemes import QuantSpec, get_scheme, quantize_weight


def _official(W, H, grid, blocksize=128, percdamp=0.01, groupsize=-1, actorder=False, static_groups=False):
    W = W.clone().float()
    columns = W.shape[1]
    params = grid.params(W)  # quantizer.find_params(W, weight=True) before the dead columns
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        groups = [grid.params(W[:, i : (i + groupsize)]) for i in range(0, columns, groupsize)]
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        params = grid.params(W[:, (i1 + i) : (i1 + i + groupsize)])
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    params = groups[idx // groupsize]
            q = grid.quantize(w, params)[1]
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def _problem(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    X = torch.randn(4 * cols, cols, generator=g) * torch.exp(torch.randn(cols, generator=g))
    return W, 2 * X.T @ X / (4 * cols)


CASES = [  # scheme, group, symmetric, blocksize: a group inside a block, groups spanning blocks, per channel, GGUF
    ("w4a16", 32, True, 128),
    ("w4a16", 64, False, 32),
    ("w8a8", -1, True, 128),
    ("q4_0", 32, True, 128),
    ("q5_1", 32, False, 64),
]


@pytest.mark.parametrize("scheme,group,sym,blocksize", CASES)
@pytest.mark.parametrize("act_order", [False, True])
def test_equals_the_official_algorithm(scheme, group, sym, blocksize, act_order):
    spec = QuantSpec(get_scheme(scheme), group, sym)
    grid = grid_for(spec, torch.float32)
    W, H = _problem(24, 192)
    codes, Q, params, _ = gptq_quantize(W, H, grid, blocksize, 0.01, act_order)
    g = grid.group_size(192)
    ref = _official(W, H, grid, blocksize, 0.01, -1 if g == 192 else g, act_order, static_groups=act_order and g != 192)
    torch.testing.assert_close(Q, ref, atol=1e-6, rtol=1e-6)
    qw = grid.finish(codes, params, W)
    torch.testing.assert_close(qw.dequantized.float(), Q, atol=0, rtol=0)  # the written codes give GPTQ's weights


@pytest.mark.parametrize("scheme,group,sym", [("w4a16", 32, True), ("w4a16", 32, False), ("q4_1", 32, False), ("q8_0", 32, True)])
def test_identity_hessian_is_round_to_nearest(scheme, group, sym):
    spec = QuantSpec(get_scheme(scheme), group, sym)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    grid = grid_for(spec, torch.float32)
    codes, _, params, _ = gptq_quantize(W, torch.eye(64), grid)
    qw = grid.finish(codes, params, W)
    ref = quantize_weight(W, spec, use_triton=False)
    assert set(qw.parts) == set(ref.parts)
    for k in ref.parts:
        assert torch.equal(qw.parts[k], ref.parts[k]), k


def test_gptq_lowers_the_output_error_of_rtn():
    spec = QuantSpec(get_scheme("w4a16"), 32, True)
    W, H = _problem(32, 128, seed=7)
    grid = grid_for(spec, torch.float32)
    _, Q, _, _ = gptq_quantize(W, H, grid, act_order=True)
    rtn = quantize_weight(W, spec, use_triton=False).dequantized
    err = lambda A: float(((A - W) @ H @ (A - W).T).trace())  # noqa: E731
    assert err(Q) < 0.85 * err(rtn)
