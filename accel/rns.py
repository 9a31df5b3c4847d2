"""Residue number system over a basis of word-size primes: lifting integers in, CRT back out.

The ciphertext modulus Q = prod q_i is far beyond 64 bits (up to ~870 bits here), so ring elements
live as L residues per coefficient and every hot operation is limb-wise.  Only decryption needs the
full integer; it reconstructs with the CRT on Python integers (exact, and off the hot path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod

import numpy as np
import torch

from .barrett import Barrett, barrett_reduce


def _mulmod(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return barrett_reduce(a * b, q, m, k)


@lru_cache(maxsize=1)
def _mulmod_compiled():
    """Inductor-fused product + Barrett, built on first CUDA use (keeps Dynamo out of CPU imports)."""
    return torch.compile(_mulmod, dynamic=True)


@dataclass(frozen=True)
class RNSBasis:
    """Primes q_0..q_{L-1} with broadcastable torch constants for limb-wise Barrett reduction."""

    primes: tuple[int, ...]
    modulus: int = field(init=False)

    def __post_init__(self) -> None:
        if len(set(self.primes)) != len(self.primes):
            raise ValueError("RNS primes must be distinct")
        object.__setattr__(self, "modulus", prod(self.primes))

    def column(self, values: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Per-limb constants as an (L, 1) int64 tensor that broadcasts against (..., L, N)."""
        return torch.tensor(list(values), dtype=torch.int64, device=device).unsqueeze(-1)

    def reduce_product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(a * b) mod q_l for residues a, b of shape (..., L, N) (or b an (L, 1) column).

        On CUDA the product and Barrett run as one Inductor-fused kernel instead of ~10 passes.
        """
        brs = [Barrett.for_modulus(q) for q in self.primes]
        dev = a.device
        fn = _mulmod_compiled() if dev.type == "cuda" else _mulmod
        return fn(a, b, self.column(self.primes, dev), self.column([x.m for x in brs], dev),
                  self.column([x.k for x in brs], dev))

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(a + b) mod q_l for residues."""
        q = self.column(self.primes, a.device)
        s = a + b
        return s - q * (s >= q)

    def negate(self, a: torch.Tensor) -> torch.Tensor:
        """(-a) mod q_l for residues."""
        q = self.column(self.primes, a.device)
        return (q - a) * (a != 0)

    def from_signed(self, x: torch.Tensor) -> torch.Tensor:
        """Residues of signed int64 integers: (..., N) -> (..., L, N)."""
        q = self.column(self.primes, x.device)
        return torch.remainder(x.unsqueeze(-2), q)

    def scalar(self, value: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """An integer (any size) as an (L, 1) column of residues."""
        return self.column([value % q for q in self.primes], device)

    def to_integers(self, x: torch.Tensor) -> np.ndarray:
        """CRT: residues (..., L, N) -> object array (..., N) of centered Python ints in (-Q/2, Q/2]."""
        q_all = self.modulus
        res = x.detach().cpu().numpy().astype(object)
        acc = np.zeros(res.shape[:-2] + res.shape[-1:], dtype=object)
        for i, q in enumerate(self.primes):
            qi_hat = q_all // q
            acc = acc + res[..., i, :] * (qi_hat * pow(qi_hat, -1, q))
        acc = acc % q_all
        return np.where(acc > q_all // 2, acc - q_all, acc)
