"""Cheetah's coefficient encoding: a matrix-vector product as negacyclic polynomial products.

Huang et al., "Cheetah: Lean and Fast Secure Two-Party Deep Neural Network Inference" (USENIX
Security 2022), section 3.  For an n_o x n_i block W and a vector v with n_o * n_i <= N,

    pi_vec(v)  = sum_j v[j] X^j
    pi_mat(W)  = sum_{i,j} W[i, j] X^(i n_i + n_i - 1 - j)

and the coefficient of X^(i n_i + n_i - 1) in pi_mat(W) * pi_vec(v) mod (X^N + 1) is exactly
sum_j W[i, j] v[j]: other pairs land on other exponents, and the negacyclic wrap only reaches
exponents below n_i - 1.  So one ciphertext-plaintext product computes a whole block with no
rotations; larger matrices are tiled into such blocks and the partial products summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rlwe import BFV, Ciphertext


@dataclass(frozen=True)
class MatVecLayout:
    """Tiling of an (n_out, n_in) matrix into blocks of (block_out, block_in), block_out * block_in <= N."""

    n_out: int
    n_in: int
    n: int

    @property
    def block_in(self) -> int:
        return min(self.n_in, self.n)

    @property
    def block_out(self) -> int:
        return min(self.n_out, self.n // self.block_in)

    @property
    def tiles_in(self) -> int:
        return -(-self.n_in // self.block_in)

    @property
    def tiles_out(self) -> int:
        return -(-self.n_out // self.block_out)


def encode_vector(v: torch.Tensor, layout: MatVecLayout) -> torch.Tensor:
    """(..., n_in) -> (..., tiles_in, N) polynomials, tile J holding v[J*bi:(J+1)*bi] as coefficients."""
    bi, lead = layout.block_in, v.shape[:-1]
    out = torch.zeros(*lead, layout.tiles_in, layout.n, dtype=torch.int64, device=v.device)
    for j in range(layout.tiles_in):
        seg = v[..., j * bi: (j + 1) * bi]
        out[..., j, : seg.shape[-1]] = seg
    return out


def encode_matrix(w: torch.Tensor, layout: MatVecLayout) -> torch.Tensor:
    """(n_out, n_in) -> (tiles_out, tiles_in, N): block (I, J) as sum W[i, j] X^(i bi + bi - 1 - j)."""
    bi, bo, n = layout.block_in, layout.block_out, layout.n
    out = torch.zeros(layout.tiles_out, layout.tiles_in, n, dtype=torch.int64, device=w.device)
    rows = torch.arange(bo, device=w.device).unsqueeze(1)
    cols = torch.arange(bi, device=w.device).unsqueeze(0)
    expo = rows * bi + bi - 1 - cols  # (bo, bi), all distinct and < N
    for i_t in range(layout.tiles_out):
        for j_t in range(layout.tiles_in):
            blk = w[i_t * bo: (i_t + 1) * bo, j_t * bi: (j_t + 1) * bi]
            h, k = blk.shape
            out[i_t, j_t].index_put_((expo[:h, :k].reshape(-1),), blk.reshape(-1).to(torch.int64))
    return out


def decode_result(products: torch.Tensor, layout: MatVecLayout) -> torch.Tensor:
    """(..., tiles_out, N) summed block products -> (..., n_out) entries of W v."""
    bi, bo = layout.block_in, layout.block_out
    idx = torch.arange(bo, device=products.device) * bi + bi - 1
    flat = products[..., idx]  # (..., tiles_out, bo)
    return flat.reshape(*products.shape[:-2], layout.tiles_out * bo)[..., : layout.n_out]


def matvec(scheme: BFV, ct_v: Ciphertext, w: torch.Tensor, layout: MatVecLayout) -> Ciphertext:
    """Homomorphic W v: ct_v encrypts encode_vector(v) (batch axis tiles_in); result has batch
    axis tiles_out, to be decrypted and read with :func:`decode_result`.  Computes, for each output
    tile I, sum_J ct_v[J] * pi_mat(W[I, J]) in one batched plaintext product plus additions.
    """
    pw = encode_matrix(w, layout)  # (tiles_out, tiles_in, N)
    lead = ct_v.data.shape[:-4]
    data = ct_v.data.unsqueeze(-5).expand(*lead, layout.tiles_out, *ct_v.data.shape[-4:])
    prods = scheme.multiply_plain(Ciphertext(data, ct_v.noise_bound), pw)
    acc = prods.data.sum(dim=-4)  # sum over input tiles, residues < tiles_in * q
    q = scheme.basis.column(scheme.params.primes, acc.device)
    acc = torch.remainder(acc, q)
    bound = prods.noise_bound * layout.tiles_in + scheme.params.r_t * (layout.tiles_in - 1)
    return Ciphertext(acc, bound)
