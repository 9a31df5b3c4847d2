"""Radix-2 butterfly negacyclic NTT in torch: the comparison path for the matrix (BAT) NTT.

Cooley-Tukey forward / Gentleman-Sande inverse with the psi twist merged into the twiddles
(Longa-Naehrig, as in SEAL), so the forward output is in the same bit-reversed evaluation order as
:mod:`pinfer.accel.ntt_matrix` and the two paths are interchangeable.  Each of the log2(N) stages is
one vectorised pass over the whole (..., L, N) batch; every product is reduced by Barrett.  It does
N/2 log2 N modular products instead of the matrix path's N (R + C) byte-GEMM MACs, but runs on the
int64 vector units, not the tensor cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from .barrett import Barrett, barrett_reduce
from .ntt_matrix import bitrev
from .primes import negacyclic_root


class ButterflyNTT:
    """Batched radix-2 NTT/INTT for one (N, primes, device)."""

    def __init__(self, n: int, primes: Sequence[int], device: torch.device | str, compile: bool = False):
        if n < 2 or n & (n - 1):
            raise ValueError("N must be a power of two")
        self.n = n
        self.primes = tuple(int(q) for q in primes)
        self.device = torch.device(device)
        bits = n.bit_length() - 1
        fwd, inv = [], []
        for q in self.primes:
            psi = negacyclic_root(n, q)
            psi_inv = pow(psi, -1, q)
            pw, pwi = [1] * n, [1] * n
            for i in range(1, n):
                pw[i] = pw[i - 1] * psi % q
                pwi[i] = pwi[i - 1] * psi_inv % q
            fwd.append([pw[bitrev(i, bits)] for i in range(n)])
            inv.append([pwi[bitrev(i, bits)] for i in range(n)])
        self.psi_br = torch.tensor(fwd, dtype=torch.int64, device=self.device)  # (L, N)
        self.psi_inv_br = torch.tensor(inv, dtype=torch.int64, device=self.device)
        brs = [Barrett.for_modulus(q) for q in self.primes]

        def col(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=self.device).reshape(-1, 1)

        self.q, self.bm, self.bk = col(self.primes), col([b.m for b in brs]), col([b.k for b in brs])
        self.n_inv = col([pow(n, -1, q) for q in self.primes])
        self._fwd = torch.compile(self._forward, dynamic=False) if compile else self._forward
        self._inv = torch.compile(self._inverse, dynamic=False) if compile else self._inverse

    def _mulmod(self, a: torch.Tensor, b: torch.Tensor, q, m, k) -> torch.Tensor:
        return barrett_reduce(a * b, q, m, k)

    def _forward(self, a: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-1]
        x = a
        m, t = 1, self.n
        while m < self.n:
            t //= 2
            v = x.reshape(*lead, m, 2, t)
            s = self.psi_br[:, m: 2 * m].unsqueeze(-1)  # (L, m, 1)
            q, bm, bk = (c.unsqueeze(-1) for c in (self.q, self.bm, self.bk))
            u, w = v[..., 0, :], self._mulmod(v[..., 1, :], s, q, bm, bk)
            hi = u + w
            lo = u - w + q
            x = torch.stack((hi - q * (hi >= q), lo - q * (lo >= q)), dim=-2).reshape(*lead, self.n)
            m *= 2
        return x

    def _inverse(self, a: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-1]
        x = a
        h, t = self.n // 2, 1
        q, bm, bk = (c.unsqueeze(-1) for c in (self.q, self.bm, self.bk))
        while h >= 1:
            v = x.reshape(*lead, h, 2, t)
            s = self.psi_inv_br[:, h: 2 * h].unsqueeze(-1)
            u, w = v[..., 0, :], v[..., 1, :]
            hi = u + w
            x = torch.stack((hi - q * (hi >= q), self._mulmod(u - w + q, s, q, bm, bk)), dim=-2).reshape(*lead, self.n)
            t *= 2
            h //= 2
        return barrett_reduce(x * self.n_inv, self.q, self.bm, self.bk)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """NTT of (..., L, N) residues in [0, q) into bit-reversed evaluation order."""
        return self._fwd(a)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`forward`."""
        return self._inv(a)

    def polymul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Negacyclic products of (..., L, N) residues, b broadcasting against a (transformed once)."""
        return self.inverse(barrett_reduce(self.forward(a) * self.forward(b), self.q, self.bm, self.bk))


@lru_cache(maxsize=32)
def plan(n: int, primes: tuple[int, ...], device: str, compile: bool = False) -> ButterflyNTT:
    """Cached plan per (N, primes, device)."""
    return ButterflyNTT(n, primes, device, compile)
