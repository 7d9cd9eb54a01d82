"""Random projections P (D x d) from a d-dimensional subspace into the D parameters: theta = theta_0 + P theta_d.

Three kinds, in a registry (``PROJECTIONS``), all with columns of unit norm and all *nested*: for a fixed
seed, the first d' columns of P at size d are P at size d', so a larger d always contains the smaller
subspaces and accuracy against d is monotone at the optimum (what bisection needs).

- ``dense``: Gaussian columns, each normalised exactly. Memory 4 D d bytes.
- ``sparse``: round(sqrt(D)) random positions per column with random signs (density 1/sqrt(D), as in
  Li et al.'s sparse projection), duplicates summed, each column normalised exactly. Memory ~ 40 d sqrt(D)
  bytes. Forward is a scatter-add over the nonzeros, backward a CSR product with P^T (custom autograd).
- ``fastfood``: P = scale * (H G Pi H B)[:D, :d] with L = next power of two >= D (Li et al.'s global
  transform). Memory 16 L bytes, O(L log L) per product whatever d. Columns have norm exactly 1 over all L
  rows; over the first D rows their norm is 1 in expectation (``scale = 1 / sqrt(D sum G^2)``), within about
  sqrt(2 (L - D) / (L D)) of 1 (0.2 % at D = 2e5).

Everything random is drawn on the CPU from ``torch.Generator`` (mt19937) seeded as ``settings()["rng"]``
says, then moved to the device, so a seed reproduces the same P on any machine with the same torch.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.ops.core.units import fmt_bytes

from .fwht import fastfood, fastfood_t, next_pow2

CHUNK = 64  # dense and sparse columns are drawn 64 at a time, each chunk from its own seed
_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def chunk_seed(seed: int, chunk: int) -> int:
    """The torch seed of one 64-column chunk: splitmix64(seed * 2^32 + chunk), 63 bits."""
    return splitmix64(((seed & 0xFFFFFFFF) << 32) | (chunk & 0xFFFFFFFF)) >> 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


class Projection:
    kind = ""

    def __init__(self, D: int, d: int, seed: int, device: torch.device):
        if not 1 <= d <= D:
            raise SurgeonError(f"subspace dimension d = {d} must be between 1 and D = {D}")
        self.D, self.d, self.seed, self.device = D, d, seed, torch.device(device)

    def __call__(self, theta_d: torch.Tensor) -> torch.Tensor:  # (d,) -> (D,), differentiable
        raise NotImplementedError

    def settings(self) -> dict:
        return {"kind": self.kind, "D": self.D, "d": self.d, "seed": self.seed, "rng": self.rng()}

    def rng(self) -> str:
        return f"torch {torch.__version__.split('+')[0]} CPU Generator (mt19937)"

    @property
    def nbytes(self) -> int:
        return 0


class DenseProjection(Projection):
    kind = "dense"

    def __init__(self, D, d, seed, device, max_bytes: int = 2 << 30, **_):
        super().__init__(D, d, seed, device)
        need = 4 * D * d
        if need > max_bytes:
            raise SurgeonError(
                f"a dense projection at d = {d} needs {fmt_bytes(need)} for D = {D:,} (limit {fmt_bytes(max_bytes)})",
                "use --projection sparse or fastfood",
            )
        rows = []
        for c in range(math.ceil(d / CHUNK)):
            block = torch.randn(CHUNK, D, generator=_generator(chunk_seed(seed, c)))
            take = min(CHUNK, d - c * CHUNK)
            block = block[:take]
            rows.append(block / block.norm(dim=1, keepdim=True))
        self.Pt = torch.cat(rows).to(self.device)  # (d, D): row j is column j of P

    def __call__(self, theta_d):
        return theta_d @ self.Pt

    def rng(self):
        return super().rng() + f"; randn({CHUNK}, D) per {CHUNK}-column chunk c, seeded splitmix64(seed << 32 | c) >> 1"

    @property
    def nbytes(self):
        return self.Pt.numel() * 4


class SparseProjection(Projection):
    kind = "sparse"

    def __init__(self, D, d, seed, device, **_):
        super().__init__(D, d, seed, device)
        k = max(1, round(math.sqrt(D)))
        self.k = k
        idx, sgn = [], []
        for c in range(math.ceil(d / CHUNK)):
            g = _generator(chunk_seed(seed, c))
            rows = torch.randint(0, D, (CHUNK, k), generator=g)
            signs = torch.randint(0, 2, (CHUNK, k), generator=g)
            take = min(CHUNK, d - c * CHUNK)
            idx.append(rows[:take])
            sgn.append(signs[:take])
        rows = torch.cat(idx).reshape(-1)
        cols = torch.arange(d).repeat_interleave(k)
        vals = torch.cat(sgn).reshape(-1).float() * 2 - 1
        # P^T as a coalesced (d, D) matrix: duplicates summed, entries sorted by column of P
        pt = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (d, D), check_invariants=False).coalesce()
        c_idx, r_idx = pt.indices()
        v = pt.values()
        norms = torch.zeros(d).index_add_(0, c_idx, v * v).sqrt()
        v = v / norms.clamp_min(1e-30)[c_idx]
        keep = v != 0
        c_idx, r_idx, v = c_idx[keep], r_idx[keep], v[keep]
        crow = torch.zeros(d + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(c_idx, minlength=d), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            self.Pt_csr = torch.sparse_csr_tensor(crow, r_idx, v, (d, D), check_invariants=False).to(self.device)
        order = torch.argsort(r_idx)  # row-sorted copy for the scatter in the forward pass
        self.rows, self.cols, self.vals = (t.to(self.device) for t in (r_idx[order], c_idx[order], v[order]))
        self.nnz = int(v.numel())

    def __call__(self, theta_d):
        return _SparseProject.apply(theta_d, self)

    def settings(self):
        return {**super().settings(), "nonzeros_per_column": self.k, "nnz": self.nnz}

    def rng(self):
        return (
            super().rng()
            + f"; per {CHUNK}-column chunk c, seeded splitmix64(seed << 32 | c) >> 1: randint(0, D, ({CHUNK}, k)) rows, "
            f"then randint(0, 2, ({CHUNK}, k)) signs"
        )

    @property
    def nbytes(self):
        return self.nnz * (8 + 8 + 4) * 2


class _SparseProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta_d, proj: SparseProjection):
        ctx.proj = proj
        out = torch.zeros(proj.D, dtype=theta_d.dtype, device=theta_d.device)
        return out.index_add_(0, proj.rows, proj.vals.to(theta_d.dtype) * theta_d[proj.cols])

    @staticmethod
    def backward(ctx, g):
        proj = ctx.proj
        pt = proj.Pt_csr if g.dtype == proj.vals.dtype else proj.Pt_csr.to(g.dtype)
        return pt @ g, None


class FastfoodProjection(Projection):
    kind = "fastfood"

    def __init__(self, D, d, seed, device, use_triton: bool | None = None, **_):
        super().__init__(D, d, seed, device)
        self.L = next_pow2(D)
        B, perm, invperm, G, sum_g2 = _fastfood_parts(self.L, seed)
        self.scale = 1.0 / math.sqrt(D * sum_g2)
        self.B, self.G = B.to(self.device), G.to(self.device)
        self.perm, self.invperm = perm.to(self.device), invperm.to(self.device)
        self.use_triton = use_triton

    def __call__(self, theta_d):
        return _FastfoodProject.apply(theta_d, self)

    def settings(self):
        return {**super().settings(), "L": self.L, "scale": self.scale}

    def rng(self):
        return super().rng() + "; seeded with seed: B = 2 randint(0, 2, (L,)) - 1, then perm = randperm(L), then G = randn(L)"

    @property
    def nbytes(self):
        return self.L * (4 + 4 + 2 * self.perm.element_size())


@functools.lru_cache(maxsize=2)
def _fastfood_parts(L: int, seed: int):
    """B, Pi, Pi^-1, G and sum(G^2) for one seed; the same for every d (a search reuses them)."""
    g = _generator(seed)
    B = torch.randint(0, 2, (L,), generator=g).float() * 2 - 1
    perm = torch.randperm(L, generator=g)
    G = torch.randn(L, generator=g)
    idx = torch.int32 if L < 2**31 else torch.int64
    inv = torch.empty(L, dtype=idx)
    inv[perm] = torch.arange(L, dtype=idx)
    return B, perm.to(idx), inv, G, float((G.double() ** 2).sum())


class _FastfoodProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta_d, proj: FastfoodProjection):
        ctx.proj = proj
        return fastfood(theta_d, proj.B, proj.perm, proj.G, proj.D, proj.scale, proj.use_triton)

    @staticmethod
    def backward(ctx, g):
        p = ctx.proj
        return fastfood_t(g.contiguous(), p.B, p.invperm, p.G, p.d, p.scale, p.use_triton), None


@dataclass(frozen=True)
class ProjectionKind:
    name: str
    build: Callable[..., Projection]
    summary: str


PROJECTIONS: Registry[ProjectionKind] = Registry("projection", "or auto", usage=False)


def register(name: str, build: Callable[..., Projection], summary: str) -> None:
    PROJECTIONS.add(name, ProjectionKind(name, build, summary))


register("dense", DenseProjection, "Gaussian columns, 4 D d bytes, O(D d) per step")
register("sparse", SparseProjection, "sqrt(D) signed nonzeros per column, O(d sqrt(D)) per step")
register("fastfood", FastfoodProjection, "H G Pi H B with one FWHT of L = 2^ceil(log2 D), O(L log L) per step")


def resolve_kind(kind: str, device: torch.device) -> str:
    """``auto``: Fastfood on CUDA (Triton FWHT, constant cost in d), sparse on the CPU (fastest measured)."""
    if kind == "auto":
        return "fastfood" if torch.device(device).type == "cuda" else "sparse"
    return PROJECTIONS.lookup(kind).name


def estimate_bytes(kind: str, D: int, d: int) -> int:
    """Peak memory of building P and one forward/backward through it, in bytes (measured on the CPU with
    torch 2.13: sparse ~120 bytes per nonzero while coalescing, dense ~2.3 x its 4 D d, fastfood ~54 L)."""
    if kind == "dense":
        return 12 * D * d + 8 * CHUNK * D
    if kind == "sparse":
        return 128 * d * max(1, round(math.sqrt(D)))
    return 64 * next_pow2(D)


def make_projection(kind: str, D: int, d: int, seed: int, device, **options) -> Projection:
    return PROJECTIONS[resolve_kind(kind, device)].build(D, d, seed, device, **options)
