"""3-step BAT NTT as Triton kernels with the digit split and the Barrett glue fused around int8 GEMMs.

Measured on H100 (docs/accel.md): ``torch._int_mm`` runs these shapes well only with the data
operand column-major, and the torch path still moves ~96 bytes per coefficient between its GEMMs
and the elementwise glue.  Here one transform is three kernels:

1. a split kernel turns residues into balanced int8 digits, as planes (R, 4, B*C) whose rows (r, q')
   are the first GEMM's contraction axis (for an INTT of a product it also does the pointwise
   product and its Barrett first);
2. a GEMM kernel computes the four byte-plane partial sums of the BAT product as four int32
   accumulators (A_p @ D for p = 0..3, each a plain int8 ``tl.dot`` over K = 4R), shift-adds them,
   Barrett-reduces, applies the step-2 twiddle and reduces again, and writes the *digits* of the
   result directly in the second GEMM's operand layout (packed as one int32 word per coefficient);
3. the second GEMM kernel does the same over the other axis and writes residues.

Per coefficient that is about 8 + 4 + 4 + 4 + 4 + 8 bytes of memory traffic instead of ~96.
Layout is (L, R, B, C) as in the torch path; the limb is the grid's third axis.  Constant operands
are stored with their contraction axis contiguous, as Hopper's 8-bit tensor-core instructions want
(+35% at N = 2^16 for the right GEMM's constant); making the *data* digits K-contiguous too was
measured slower below N = 2^16 (the transposed digit writes cost more than they save), so not done.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl

from .. import bat
from ..barrett import Barrett
from ..ntt_matrix import matrix_ntt_constants, split_dims

MIN_DIM = 32  # int8 tl.dot needs K >= 32 (one wgmma k-step), so R = sqrt(N) >= 32, N >= 1024

# (constant-side tile, data-side tile, K tile, warps, stages): best of ``pinfer bench accel``'s
# sweep on an H100 80GB HBM3 (docs/accel.md); other N use the fallback.
FALLBACK_TILES = (32, 128, 64, 4, 3)
DEFAULT_TILES: dict[int, tuple[int, int, int, int, int]] = {
    1 << 12: (32, 128, 64, 4, 3), 1 << 13: (32, 64, 128, 4, 3), 1 << 14: (32, 128, 64, 4, 4),
    1 << 15: (32, 128, 64, 4, 4), 1 << 16: (32, 128, 64, 4, 4),
}

_PLANES, _LANES, _RESIDUES = 0, 1, 2


@triton.jit
def _barrett(z, q, m, k):
    """z mod q for 0 <= z < 2^(31 + k), int64 (same algorithm as pinfer.accel.barrett)."""
    zh = z >> 31
    zl = z & 0x7FFFFFFF
    t = (zh * m + ((zl * m) >> 31)) >> k
    r = z - t * q
    return tl.where(r >= q, r - q, r)


@triton.jit
def _packed_digits(y, q):
    """Residues y in [0, q) -> balanced digits of the centered value packed little-endian in int32."""
    yc = tl.where(y > q // 2, y - q, y).to(tl.int32)
    return ((yc.to(tl.uint32, bitcast=True) + 0x80808080) ^ 0x80808080).to(tl.int32, bitcast=True)


@triton.jit
def _store_digits(out_ptr, y, q, lanes_off, plane_off, plane_stride, mask, MODE: tl.constexpr):
    """Store the digits of y as packed lanes (one int32 per coefficient) or as 4 int8 planes."""
    w = _packed_digits(y, q)
    if MODE == 1:
        tl.store(out_ptr.to(tl.pointer_type(tl.int32)) + lanes_off, w, mask=mask)
    else:
        for p in tl.static_range(4):
            tl.store(out_ptr + plane_off + p * plane_stride, ((w >> (8 * p)) & 255).to(tl.int8), mask=mask)


@triton.jit
def _split_kernel(x_ptr, x2_ptr, out_ptr, q_ptr, m_ptr, k_ptr, RB, C, NCOL,
                  HAS_MUL: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """(L, R, B, C) residues (optionally times x2, reduced) -> digits as planes (L, R, 4, B*C) or
    packed lanes (L, R*B, C) int32."""
    lim = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < RB * C
    q = tl.load(q_ptr + lim)
    y = tl.load(x_ptr + lim * RB * C + offs, mask=mask, other=0).to(tl.int64)
    if HAS_MUL:
        y2 = tl.load(x2_ptr + lim * RB * C + offs, mask=mask, other=0).to(tl.int64)
        y = _barrett(y * y2, q, tl.load(m_ptr + lim), tl.load(k_ptr + lim))
    row = offs // NCOL  # r
    n = offs % NCOL
    _store_digits(out_ptr + lim * RB * C * 4, y, q, offs, row * 4 * NCOL + n, NCOL, mask, MODE)


@triton.jit
def _gemm_left(d_ptr, a_ptr, tw_ptr, out_ptr, q_ptr, m_ptr, k_ptr, off_ptr, R: tl.constexpr, C: tl.constexpr,
               NCOL, HAS_TW: tl.constexpr, MODE: tl.constexpr, BI: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr):
    """Y[i, n] = sum_r T[i, r] X[r, n]: digits D (4R x NCOL, rows (r, q')), constant A (4R x 4R,
    rows (p, i) p-major, columns (r, q')); four accumulators, one per output byte plane p."""
    pid_n = tl.program_id(0)
    pid_i = tl.program_id(1)
    lim = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BI + tl.arange(0, BI)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < NCOL
    d_base = d_ptr + lim * 4 * R * NCOL
    a_base = a_ptr + lim * 16 * R * R
    acc0 = tl.zeros((BI, BN), dtype=tl.int32)
    acc1 = tl.zeros((BI, BN), dtype=tl.int32)
    acc2 = tl.zeros((BI, BN), dtype=tl.int32)
    acc3 = tl.zeros((BI, BN), dtype=tl.int32)
    for k0 in range(0, 4 * R, BK):
        offs_k = k0 + tl.arange(0, BK)
        d = tl.load(d_base + offs_k[:, None] * NCOL + offs_n[None, :], mask=nmask[None, :], other=0)
        a_off = offs_i[:, None] * (4 * R) + offs_k[None, :]
        acc0 = tl.dot(tl.load(a_base + a_off), d, acc0, out_dtype=tl.int32)
        acc1 = tl.dot(tl.load(a_base + 4 * R * R + a_off), d, acc1, out_dtype=tl.int32)
        acc2 = tl.dot(tl.load(a_base + 8 * R * R + a_off), d, acc2, out_dtype=tl.int32)
        acc3 = tl.dot(tl.load(a_base + 12 * R * R + a_off), d, acc3, out_dtype=tl.int32)
    q = tl.load(q_ptr + lim)
    m = tl.load(m_ptr + lim)
    kk = tl.load(k_ptr + lim)
    z = acc0.to(tl.int64) + (acc1.to(tl.int64) << 8) + (acc2.to(tl.int64) << 16) + (acc3.to(tl.int64) << 24)
    y = _barrett(z + tl.load(off_ptr + lim), q, m, kk)
    if HAS_TW:
        tw = tl.load(tw_ptr + lim * R * C + offs_i[:, None] * C + (offs_n % C)[None, :])
        y = _barrett(y * tw, q, m, kk)
    flat = offs_i[:, None].to(tl.int64) * NCOL + offs_n[None, :]
    mask = nmask[None, :]
    if MODE == 2:
        tl.store(out_ptr + lim * R * NCOL + flat, y, mask=mask)
    else:  # digits of the result as packed lanes (R*B, C) for the right GEMM
        _store_digits(out_ptr + lim * R * NCOL * 4, y, q, flat, flat, 0, mask, 1)


@triton.jit
def _gemm_right(d_ptr, b_ptr, tw_ptr, out_ptr, q_ptr, m_ptr, k_ptr, off_ptr, C: tl.constexpr,
                MROWS, BATCH, HAS_TW: tl.constexpr, MODE: tl.constexpr, BJ: tl.constexpr,
                BM: tl.constexpr, BK: tl.constexpr):
    """Y[m, j] = sum_c X[m, c] T[c, j]: digits D (MROWS x 4C, columns (c, q')), constant B (4C x 4C,
    rows (c, q'), columns (p, j) p-major) stored transposed so that K is contiguous, as Hopper's 8-bit
    tensor-core instructions want (measured +35% at N = 2^16); four accumulators, one per plane."""
    pid_j = tl.program_id(0)
    pid_m = tl.program_id(1)
    lim = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    mmask = offs_m < MROWS
    d_base = d_ptr + lim * MROWS * 4 * C
    b_base = b_ptr + lim * 16 * C * C
    acc0 = tl.zeros((BM, BJ), dtype=tl.int32)
    acc1 = tl.zeros((BM, BJ), dtype=tl.int32)
    acc2 = tl.zeros((BM, BJ), dtype=tl.int32)
    acc3 = tl.zeros((BM, BJ), dtype=tl.int32)
    for k0 in range(0, 4 * C, BK):
        offs_k = k0 + tl.arange(0, BK)
        d = tl.load(d_base + offs_m[:, None].to(tl.int64) * (4 * C) + offs_k[None, :], mask=mmask[:, None], other=0)
        b_off = offs_j[None, :] * (4 * C) + offs_k[:, None]
        acc0 = tl.dot(d, tl.load(b_base + b_off), acc0, out_dtype=tl.int32)
        acc1 = tl.dot(d, tl.load(b_base + C * 4 * C + b_off), acc1, out_dtype=tl.int32)
        acc2 = tl.dot(d, tl.load(b_base + 2 * C * 4 * C + b_off), acc2, out_dtype=tl.int32)
        acc3 = tl.dot(d, tl.load(b_base + 3 * C * 4 * C + b_off), acc3, out_dtype=tl.int32)
    q = tl.load(q_ptr + lim)
    m = tl.load(m_ptr + lim)
    kk = tl.load(k_ptr + lim)
    z = acc0.to(tl.int64) + (acc1.to(tl.int64) << 8) + (acc2.to(tl.int64) << 16) + (acc3.to(tl.int64) << 24)
    y = _barrett(z + tl.load(off_ptr + lim), q, m, kk)
    rows = offs_m // BATCH  # i
    if HAS_TW:
        tw = tl.load(tw_ptr + lim * (MROWS // BATCH) * C + rows[:, None] * C + offs_j[None, :], mask=mmask[:, None], other=0)
        y = _barrett(y * tw, q, m, kk)
    flat = offs_m[:, None].to(tl.int64) * C + offs_j[None, :]
    mask = mmask[:, None]
    if MODE == 2:
        tl.store(out_ptr + lim * MROWS * C + flat, y, mask=mask)
    else:  # digits of the result as planes (R, 4, B*C) for the left GEMM
        ncol = BATCH * C
        plane_off = rows[:, None].to(tl.int64) * 4 * ncol + (offs_m % BATCH)[:, None] * C + offs_j[None, :]
        _store_digits(out_ptr + lim * MROWS * C * 4, y, q, flat, plane_off, ncol, mask, 0)


class TritonMatrixNTT:
    """Batched negacyclic NTT/INTT for one (N, primes) on CUDA through the kernels above."""

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
                rows, cols = b.shape[:2]
                if left:  # rows (p, i), columns (r, q')
                    arrs.append(b.transpose(3, 0, 1, 2).reshape(4 * rows, 4 * cols))
                else:  # stored as rows (p, j), columns (c, q'): the transpose, K contiguous
                    arrs.append(b.transpose(3, 1, 0, 2).reshape(4 * cols, 4 * rows))
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

    def _split(self, x: torch.Tensor, mode: int, x2: torch.Tensor | None = None) -> torch.Tensor:
        lsz, r, b, c = x.shape
        out = torch.empty((lsz, r * b * c * 4), dtype=torch.int8, device=x.device)
        block = 1024
        _split_kernel[(triton.cdiv(r * b * c, block), lsz)](
            x, x2 if x2 is not None else x, out, self.q, self.bm, self.bk, r * b, c, b * c,
            HAS_MUL=x2 is not None, MODE=mode, BLOCK=block)
        return out

    def _left(self, d: torch.Tensor, shape, mats, tw, mode: int, out_dtype) -> torch.Tensor:
        lsz, r, b, c = shape
        ti, tn, tk, warps, stages = self.tiles
        bi, bk = min(ti, r), min(tk, 4 * r)
        out = (torch.empty((lsz, r * b * c * 4), dtype=torch.int8, device=d.device) if mode != _RESIDUES
               else torch.empty(shape, dtype=out_dtype, device=d.device))
        grid = (triton.cdiv(b * c, tn), r // bi, lsz)
        _gemm_left[grid](d, mats, tw if tw is not None else self.t2, out, self.q, self.bm, self.bk, self.off_r,
                         R=r, C=c, NCOL=b * c, HAS_TW=tw is not None, MODE=mode, BI=bi, BN=tn, BK=bk,
                         num_warps=warps, num_stages=stages)
        return out

    def _right(self, d: torch.Tensor, shape, mats, tw, mode: int, out_dtype) -> torch.Tensor:
        lsz, r, b, c = shape
        tj, tm, tk, warps, stages = self.tiles
        bj, bk = min(tj, c), min(tk, 4 * c)
        out = (torch.empty((lsz, r * b * c * 4), dtype=torch.int8, device=d.device) if mode != _RESIDUES
               else torch.empty(shape, dtype=out_dtype, device=d.device))
        grid = (c // bj, triton.cdiv(r * b, tm), lsz)
        _gemm_right[grid](d, mats, tw if tw is not None else self.t2, out, self.q, self.bm, self.bk, self.off_c,
                          C=c, MROWS=r * b, BATCH=b, HAS_TW=tw is not None, MODE=mode, BJ=bj, BM=tm, BK=bk,
                          num_warps=warps, num_stages=stages)
        return out

    def forward_internal(self, x: torch.Tensor, out_dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """NTT of (L, R, B, C) residues (int32 or int64) -> bit-reversed evaluations, same layout."""
        x = x.contiguous()
        lanes = self._left(self._split(x, _PLANES), x.shape, self.t1, self.t2, _LANES, None)
        return self._right(lanes, x.shape, self.t3, None, _RESIDUES, out_dtype)

    def inverse_internal(self, x: torch.Tensor, out_dtype: torch.dtype = torch.int64,
                         times: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of :meth:`forward_internal`; with ``times``, the INTT of the pointwise product."""
        x = x.contiguous()
        lanes = self._split(x, _LANES, times.contiguous() if times is not None else None)
        planes = self._right(lanes, x.shape, self.u3, self.u2, _PLANES, None)
        return self._left(planes, x.shape, self.u1, None, _RESIDUES, out_dtype)

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
        """Negacyclic products of (..., L, N) residues, b broadcasting against a: b is transformed at
        its own size, and the pointwise product is fused into the INTT's digit split."""
        fa = self.forward_internal(self.to_internal(a), torch.int32)
        fb = self.forward_internal(self.to_internal(b), torch.int32)
        if b.shape != a.shape:
            fb = self.to_internal(self.from_internal(fb, b.shape[:-2]).expand(a.shape))
        return self.from_internal(self.inverse_internal(fa, times=fb), a.shape[:-2])


@lru_cache(maxsize=32)
def plan(n: int, primes: tuple[int, ...], device: str = "cuda") -> TritonMatrixNTT:
    """Cached plan per (N, primes, device)."""
    return TritonMatrixNTT(n, primes, device)
