"""AES-256-CTR pseudo-random streams for shares, masks and tuples.

Every random value in a share or a Beaver tuple comes from one of these streams; torch's Mersenne
twister never touches secret material. Two holders of the same 32-byte seed (a party and the dealer,
or two neighbouring parties) expand identical streams as long as they request the same shapes in the
same order, which is what lets the dealer send corrections instead of whole tuples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32


def fresh_seed() -> bytes:
    """A new 256-bit seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


class AesCtrStream:
    """A deterministic stream of uniformly random bytes keyed by a secret seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()

    def random_bytes(self, count: int) -> bytes:
        return self._encryptor.update(bytes(count))

    def ring_elements(self, shape: Sequence[int]) -> torch.Tensor:
        """Uniform elements of Z_2^64 as signed int64, CrypTen's share representation."""
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        values = np.frombuffer(self.random_bytes(8 * count), dtype=np.int64).copy()
        return torch.from_numpy(values).reshape(tuple(shape))

    def bits(self, shape: Sequence[int], bitlength: int) -> torch.Tensor:
        """Uniform non-negative integers below 2**bitlength, as int64."""
        if not 1 <= bitlength <= 64:
            raise ValueError(f"bitlength must be in [1, 64], got {bitlength}")
        elements = self.ring_elements(shape)
        if bitlength == 64:
            return elements
        return elements & ((1 << bitlength) - 1)
