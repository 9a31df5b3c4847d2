"""Secret randomness for the RLWE scheme, drawn from the OS CSPRNG (``os.urandom``) only.

Ternary secrets, centered-binomial errors and uniform residues are produced from urandom bytes with
exact rejection or counting, so their distributions are the stated ones (no modulo bias) and no
seedable PRNG ever touches key material.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

CBD_ETA = 21  # centered binomial B(2*eta, 1/2) - eta: sigma = sqrt(eta/2) = 3.24 >= 3.19 (HE standard); |e| <= eta


def _bytes(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(count), dtype=np.uint8)


def ternary(shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform {-1, 0, 1} (int64): bytes below 255 = 3 * 85 taken mod 3, the rest rejected."""
    total = int(np.prod(shape))
    out = np.empty(0, dtype=np.int64)
    while out.size < total:
        b = _bytes(2 * (total - out.size) + 16)
        out = np.concatenate([out, (b[b < 255] % 3).astype(np.int64) - 1])
    return torch.from_numpy(out[:total].reshape(shape).copy())


def centered_binomial(shape: tuple[int, ...], eta: int = CBD_ETA) -> torch.Tensor:
    """popcount(eta random bits) - popcount(eta random bits), int64 in [-eta, eta]."""
    total = int(np.prod(shape))
    nbytes = (2 * eta + 7) // 8
    bits = np.unpackbits(_bytes(total * nbytes).reshape(total, nbytes), axis=1)[:, : 2 * eta]
    e = bits[:, :eta].sum(axis=1, dtype=np.int64) - bits[:, eta:].sum(axis=1, dtype=np.int64)
    return torch.from_numpy(e.reshape(shape))


def uniform_rns(primes: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform residues, shape (*shape[:-1], L, N) with limb l uniform in [0, primes[l]).

    Independent uniform limbs are, by the CRT, a uniform element of Z_Q.
    """
    limbs = []
    total = int(np.prod(shape))
    for q in primes:
        limit = (1 << 32) // q * q
        got = np.empty(0, dtype=np.int64)
        while got.size < total:
            w = np.frombuffer(os.urandom(4 * (total - got.size) + 64), dtype=np.uint32).astype(np.int64)
            got = np.concatenate([got, w[w < limit] % q])
        limbs.append(got[:total].reshape(shape))
    return torch.from_numpy(np.stack(limbs, axis=-2))
