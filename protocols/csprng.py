"""AES-256-CTR pseudo-random streams for shares, masks and tuples.

Every random value in a share or a Beaver tuple comes from one of these streams; torch's Mersenne
twister never touches secret material. Two holders of the same 32-byte seed (a party and the dealer,
or two neighbouring parties) expand identical streams as long as they request the same shapes in the
same order, which is what lets the dealer send corrections instead of whole tuples.

The keystream is produced in place (``update_into`` over a shared zero block) and small requests are
served from a pre-generated pool, so a draw costs a slice rather than an AES call; the byte sequence
is the same however requests are split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_CHUNK = 1 << 20
_POOL = 1 << 16
_ZEROS = memoryview(bytes(_CHUNK))
_BLOCK = 16


def fresh_seed() -> bytes:
    """A new 256-bit seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


class AesCtrStream:
    """A deterministic stream of uniformly random bytes keyed by a secret seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
        self._pool = np.empty(0, dtype=np.uint8)
        self._used = 0

    def _keystream(self, count: int) -> np.ndarray:
        # update_into needs block-1 spare bytes after each write; CTR writes exactly the input length.
        out = np.empty(count + _BLOCK, dtype=np.uint8)
        view = memoryview(out)
        for offset in range(0, count, _CHUNK):
            size = min(_CHUNK, count - offset)
            self._encryptor.update_into(_ZEROS[:size], view[offset : offset + size + _BLOCK - 1])
        return out[:count]

    def random_array(self, count: int) -> np.ndarray:
        """The next ``count`` bytes of the stream as a fresh uint8 array."""
        available = len(self._pool) - self._used
        if count <= available:
            out = self._pool[self._used : self._used + count].copy()
            self._used += count
            return out
        head = self._pool[self._used :]
        rest = count - len(head)
        if rest >= _POOL:
            tail = self._keystream(rest)
            self._used = len(self._pool)
        else:
            self._pool, self._used = self._keystream(_POOL), rest
            tail = self._pool[:rest]
        return np.concatenate([head, tail])

    def random_bytes(self, count: int) -> bytes:
        return self.random_array(count).tobytes()

    def ring_elements(self, shape: Sequence[int]) -> torch.Tensor:
        """Uniform elements of Z_2^64 as signed int64, CrypTen's share representation."""
        shape = tuple(int(d) for d in shape)
        return torch.from_numpy(self.random_array(8 * math.prod(shape)).view(np.int64)).view(shape)

    def bits(self, shape: Sequence[int], bitlength: int) -> torch.Tensor:
        """Uniform non-negative integers below 2**bitlength, as int64."""
        if not 1 <= bitlength <= 64:
            raise ValueError(f"bitlength must be in [1, 64], got {bitlength}")
        elements = self.ring_elements(shape)
        if bitlength == 64:
            return elements
        return elements & ((1 << bitlength) - 1)
