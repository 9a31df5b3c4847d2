"""3-step BAT NTT as two fused Triton int8 GEMM kernels per transform (CUDA).

The torch path (:mod:`.torch_matrix`) materialises four int32 partial sums per coefficient between
the GEMMs and the Barrett glue -- 64 of its ~96 bytes of memory traffic per coefficient -- and
cuBLASLt's int8 GEMM behind ``torch._int_mm`` reached only ~130 TOPS on H100 for these shapes.
Here each step is one kernel that

* loads int32 residues and splits them into balanced int8 digits in registers (prologue),
* runs 16 int8 ``tl.dot`` per K-tile on the tensor cores (4 input digits x 4 output byte planes,
  the 4x4 BAT block) into four int32 accumulators,
* shift-adds the planes, Barrett-reduces, optionally multiplies by the step-2 twiddle and reduces
  again, and stores int32 residues (epilogue),

so a forward or inverse NTT reads and writes each coefficient once per step (16 B total).
Layout is (L, R, B, C) as in the torch path; the limb is the grid's third axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl

from .. import bat
from ..barrett import Barrett, barrett_reduce
from ..ntt_matrix import matrix_ntt_constants, split_dims

MIN_DIM = 16  # tl.dot needs tiles of at least 16 along every axis

# (constant-side tile, data-side tile, K tile, warps, stages), best of the sweep in
# ``pinfer bench accel`` on an H100 80GB HBM3 (docs/accel.md); other N use the fallback.
FALLBACK_TILES = (64, 64, 32, 4, 3)
DEFAULT_TILES: dict[int, tuple[int, int, int, int, int]] = {}


@triton.jit
def _digit(yc, p: tl.constexpr):
    """Balanced digit p (int8) of centered residues yc (int32, |yc| < 2^30)."""
    v = yc.to(tl.uint32, bitcast=True) + 0x80808080
    return (((v >> (8 * p)) & 255).to(tl.int32) - 128).to(tl.int8)


@triton.jit
def _barrett(z, q, m, k):
    """z mod q for 0 <= z < 2^(31 + k), int64 (same algorithm as pinfer.accel.barrett)."""
    zh = z >> 31
    zl = z & 0x7FFFFFFF
    t = (zh * m + ((zl * m) >> 31)) >> k
    r = z - t * q
    return tl.where(r >= q, r - q, r)


@triton.jit
def _left_kernel(x_ptr, a_ptr, tw_ptr, y_ptr, q_ptr, m_ptr, k_ptr, off_ptr,
                 R: tl.constexpr, C: tl.constexpr, NCOL, HAS_TW: tl.constexpr,
                 BI: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Y[l, i, n] = sum_r T[l, i, r] X[l, r, n] over n = (b, c); constant blocks (L, 4p, 4q', R, R)."""
    pid_n = tl.program_id(0)
    pid_i = tl.program_id(1)
    lim = tl.program_id(2).to(tl.int64)
    q = tl.load(q_ptr + lim)
    q32 = q.to(tl.int32)
    offs_i = pid_i * BI + tl.arange(0, BI)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < NCOL
    x_base = x_ptr + lim * R * NCOL
    a_base = a_ptr + lim * 16 * R * R
    acc0 = tl.zeros((BI, BN), dtype=tl.int32)
    acc1 = tl.zeros((BI, BN), dtype=tl.int32)
    acc2 = tl.zeros((BI, BN), dtype=tl.int32)
    acc3 = tl.zeros((BI, BN), dtype=tl.int32)
    for k0 in range(0, R, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_base + offs_k[:, None] * NCOL + offs_n[None, :], mask=nmask[None, :], other=0).to(tl.int32)
        xc = tl.where(x > q32 // 2, x - q32, x)
        a_off = offs_i[:, None] * R + offs_k[None, :]
        for s in tl.static_range(4):
            d = _digit(xc, s)
            acc0 = tl.dot(tl.load(a_base + (0 * 4 + s) * R * R + a_off), d, acc0, out_dtype=tl.int32)
            acc1 = tl.dot(tl.load(a_base + (1 * 4 + s) * R * R + a_off), d, acc1, out_dtype=tl.int32)
            acc2 = tl.dot(tl.load(a_base + (2 * 4 + s) * R * R + a_off), d, acc2, out_dtype=tl.int32)
            acc3 = tl.dot(tl.load(a_base + (3 * 4 + s) * R * R + a_off), d, acc3, out_dtype=tl.int32)
    m = tl.load(m_ptr + lim)
    kk = tl.load(k_ptr + lim)
    z = acc0.to(tl.int64) + (acc1.to(tl.int64) << 8) + (acc2.to(tl.int64) << 16) + (acc3.to(tl.int64) << 24)
    y = _barrett(z + tl.load(off_ptr + lim), q, m, kk)
    if HAS_TW:
        tw = tl.load(tw_ptr + lim * R * C + offs_i[:, None] * C + (offs_n % C)[None, :])
        y = _barrett(y * tw, q, m, kk)
    tl.store(y_ptr + lim * R * NCOL + offs_i[:, None] * NCOL + offs_n[None, :], y, mask=nmask[None, :])


@triton.jit
def _right_kernel(x_ptr, b_ptr, tw_ptr, y_ptr, q_ptr, m_ptr, k_ptr, off_ptr,
                  C: tl.constexpr, MROWS, BATCH, HAS_TW: tl.constexpr,
                  BM: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr):
    """Y[l, m, j] = sum_c X[l, m, c] T[l, c, j] over rows m = (i, b); constant blocks (L, 4q', 4p, C, C)."""
    pid_j = tl.program_id(0)
    pid_m = tl.program_id(1)
    lim = tl.program_id(2).to(tl.int64)
    q = tl.load(q_ptr + lim)
    q32 = q.to(tl.int32)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    mmask = offs_m < MROWS
    x_base = x_ptr + lim * MROWS * C
    b_base = b_ptr + lim * 16 * C * C
    acc0 = tl.zeros((BM, BJ), dtype=tl.int32)
    acc1 = tl.zeros((BM, BJ), dtype=tl.int32)
    acc2 = tl.zeros((BM, BJ), dtype=tl.int32)
    acc3 = tl.zeros((BM, BJ), dtype=tl.int32)
    for k0 in range(0, C, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_base + offs_m[:, None] * C + offs_k[None, :], mask=mmask[:, None], other=0).to(tl.int32)
        xc = tl.where(x > q32 // 2, x - q32, x)
        b_off = offs_k[:, None] * C + offs_j[None, :]
        for s in tl.static_range(4):
            d = _digit(xc, s)
            acc0 = tl.dot(d, tl.load(b_base + (s * 4 + 0) * C * C + b_off), acc0, out_dtype=tl.int32)
            acc1 = tl.dot(d, tl.load(b_base + (s * 4 + 1) * C * C + b_off), acc1, out_dtype=tl.int32)
            acc2 = tl.dot(d, tl.load(b_base + (s * 4 + 2) * C * C + b_off), acc2, out_dtype=tl.int32)
            acc3 = tl.dot(d, tl.load(b_base + (s * 4 + 3) * C * C + b_off), acc3, out_dtype=tl.int32)
    m = tl.load(m_ptr + lim)
    kk = tl.load(k_ptr + lim)
    z = acc0.to(tl.int64) + (acc1.to(tl.int64) << 8) + (acc2.to(tl.int64) << 16) + (acc3.to(tl.int64) << 24)
    y = _barrett(z + tl.load(off_ptr + lim), q, m, kk)
    if HAS_TW:
        rows = offs_m // BATCH
        tw = tl.load(tw_ptr + lim * (MROWS // BATCH) * C + rows[:, None] * C + offs_j[None, :], mask=mmask[:, None], other=0)
        y = _barrett(y * tw, q, m, kk)
    tl.store(y_ptr + lim * MROWS * C + offs_m[:, None] * C + offs_j[None, :], y, mask=mmask[:, None])


class TritonMatrixNTT:
    """Batched negacyclic NTT/INTT for one (N, primes) on CUDA through the fused kernels above."""

    def __init__(self, n: int, primes: Sequence[int], device: torch.device | str = "cuda",
                 tiles: tuple[int, int, int, int, int] | None = None):
        self.n = n
        self.primes = tuple(int(q) for q in primes)
        self.device = torch.device(device)
        self.r, self.c = split_dims(n)
        if self.r < MIN_DIM:
            raise ValueError(f"N={n} too small for the Triton path (needs R >= {MIN_DIM})")
        self.tiles = tiles or DEFAULT_TILES.get(n, FALLBACK_TILES)
        consts = [matrix_ntt_constants(n, q) for q in self.primes]

        def blocks(name: str, left: bool) -> torch.Tensor:
            arrs = []
            for k in consts:
                b = bat.expand_constant(getattr(k, name), k.q)  # (row, col, q', p)
                arrs.append(b.transpose(3, 2, 0, 1) if left else b.transpose(2, 3, 0, 1))
            return torch.from_numpy(np.ascontiguousarray(np.stack(arrs))).to(self.device)

        self.t1, self.u1 = blocks("t1", True), blocks("u1", True)
        self.t3, self.u3 = blocks("t3", False), blocks("u3", False)
        self.t2 = torch.from_numpy(np.stack([k.t2 for k in consts])).to(self.device)
        self.u2 = torch.from_numpy(np.stack([k.u2 for k in consts])).to(self.device)
        brs = [Barrett.for_modulus(q) for q in self.primes]

        def vec(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=self.device)

        self.q, self.bm, self.bk = vec(self.primes), vec([b.m for b in brs]), vec([b.k for b in brs])
        self.off_r = vec([bat.reduction_offset(self.r, q) for q in self.primes])
        self.off_c = vec([bat.reduction_offset(self.c, q) for q in self.primes])

    def _left(self, x: torch.Tensor, mats: torch.Tensor, tw: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
        lsz, r, b, c = x.shape
        y = torch.empty((lsz, r, b, c), dtype=out_dtype, device=x.device)
        bi, bn, bk, warps, stages = min(self.tiles[0], r), self.tiles[1], min(self.tiles[2], r), *self.tiles[3:]
        grid = (triton.cdiv(b * c, bn), r // bi, lsz)
        _left_kernel[grid](x, mats, tw if tw is not None else self.t2, y, self.q, self.bm, self.bk, self.off_r,
                           R=r, C=c, NCOL=b * c, HAS_TW=tw is not None, BI=bi, BN=bn, BK=bk,
                           num_warps=warps, num_stages=stages)
        return y

    def _right(self, x: torch.Tensor, mats: torch.Tensor, tw: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
        lsz, r, b, c = x.shape
        y = torch.empty((lsz, r, b, c), dtype=out_dtype, device=x.device)
        bm, bj, bk, warps, stages = self.tiles[1], min(self.tiles[0], c), min(self.tiles[2], c), *self.tiles[3:]
        grid = (c // bj, triton.cdiv(r * b, bm), lsz)
        _right_kernel[grid](x, mats, tw if tw is not None else self.t2, y, self.q, self.bm, self.bk, self.off_c,
                            C=c, MROWS=r * b, BATCH=b, HAS_TW=tw is not None, BM=bm, BJ=bj, BK=bk,
                            num_warps=warps, num_stages=stages)
        return y

    def forward_internal(self, x: torch.Tensor, out_dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """NTT of (L, R, B, C) residues (int32 or int64) -> bit-reversed evaluations, same layout."""
        return self._right(self._left(x.contiguous(), self.t1, self.t2, torch.int32), self.t3, None, out_dtype)

    def inverse_internal(self, x: torch.Tensor, out_dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """Inverse of :meth:`forward_internal`."""
        return self._left(self._right(x.contiguous(), self.u3, self.u2, torch.int32), self.u1, None, out_dtype)

    def to_internal(self, a: torch.Tensor) -> torch.Tensor:
        """(..., L, N) -> (L, R, B, C) contiguous."""
        b = int(np.prod(a.shape[:-2])) if a.dim() > 2 else 1
        return a.reshape(b, len(self.primes), self.r, self.c).permute(1, 2, 0, 3).contiguous()

    def from_internal(self, x: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """(L, R, B, C) -> (..., L, N)."""
        return x.permute(2, 0, 1, 3).reshape(*lead, len(self.primes), self.n)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """NTT of (..., L, N) int64 residues."""
        return self.from_internal(self.forward_internal(self.to_internal(a)), a.shape[:-2])

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """INTT of (..., L, N) bit-reversed evaluations."""
        return self.from_internal(self.inverse_internal(self.to_internal(a)), a.shape[:-2])

    def polymul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Negacyclic products of (..., L, N) residues, limb by limb."""
        fa = self.forward_internal(self.to_internal(a))
        fb = self.forward_internal(self.to_internal(b))
        prod = _mulmod(fa, fb, self.q, self.bm, self.bk)
        return self.from_internal(self.inverse_internal(prod), a.shape[:-2])


def _mulmod(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    shape = (-1, 1, 1, 1)
    return barrett_reduce(a * b, q.view(shape), m.view(shape), k.view(shape))


@lru_cache(maxsize=32)
def plan(n: int, primes: tuple[int, ...], device: str = "cuda") -> TritonMatrixNTT:
    """Cached plan per (N, primes, device)."""
    return TritonMatrixNTT(n, primes, device)
