"""The tree PRG of the DCF: one 128-bit seed -> two child seeds, two control bits, two 64-bit values.

Fixed-key AES in Matyas-Meyer-Oseas mode, ``H_i(s) = AES_K(s ^ i) ^ s ^ i`` for the tweaks
i = 0, 1, 2, is the standard way to expand many seeds at AES-NI speed (Guo et al., "Efficient and
Secure Multiparty Computation from Fixed-Key Block Ciphers", S&P 2020): one bulk ECB call expands a
whole tree level for every key at once. The key K is public; security rests on AES behaving as a
random permutation, as in every fixed-key FSS implementation.

Seeds are ``(count, 2)`` uint64 arrays (little-endian halves of the 128-bit block). The control bit
of a child is the lowest bit of its block, which is then cleared, so children carry 127 random bits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_FIXED_KEY = hashlib.sha256(b"pinfer fss prg v1").digest()[:16]
_MAX_VALUE_WORDS = 4
_TWEAKS = np.array([[i, 0] for i in range(2 + _MAX_VALUE_WORDS)], dtype=np.uint64)
_CLEAR_LOW = np.uint64(0xFFFFFFFFFFFFFFFE)

def blocks_per_expansion(value_words: int = 1) -> int:
    """AES blocks one seed expansion costs: two child seeds and one block per value word pair."""
    return 2 + value_words


@dataclass(frozen=True)
class Expansion:
    """The children of ``count`` seeds: ``seed_*`` (count, 2) uint64, ``bit_*`` (count,) uint64 in {0, 1},
    ``value_*`` (count, value_words) uint64 (elements of Z_2^64)."""

    seed_left: np.ndarray
    bit_left: np.ndarray
    seed_right: np.ndarray
    bit_right: np.ndarray
    value_left: np.ndarray
    value_right: np.ndarray


def expand(seeds: np.ndarray, value_words: int = 1) -> Expansion:
    """Expand every seed of a ``(count, 2)`` uint64 array: one AES-ECB call over ``2 + value_words``
    blocks per seed (tweaks 0 and 1 the child seeds, tweak 2 + j the j-th value of each child)."""
    if seeds.ndim != 2 or seeds.shape[1] != 2 or seeds.dtype != np.uint64:
        raise ValueError(f"seeds must be a (count, 2) uint64 array, got {seeds.dtype} {seeds.shape}")
    if not 1 <= value_words <= _MAX_VALUE_WORDS:
        raise ValueError(f"value_words must lie in 1..{_MAX_VALUE_WORDS}, got {value_words}")
    blocks_each = blocks_per_expansion(value_words)
    inputs = np.empty((seeds.shape[0], blocks_each, 2), dtype=np.uint64)
    np.bitwise_xor(seeds[:, None, :], _TWEAKS[None, :blocks_each, :], out=inputs)
    # one writable buffer for the ciphertext, so the outputs below are views into it, not copies
    out = bytearray(inputs.nbytes + 15)
    encryptor = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
    written = encryptor.update_into(memoryview(inputs).cast("B"), out)
    blocks = np.frombuffer(out, dtype=np.uint64, count=written // 8).reshape(inputs.shape)
    blocks ^= inputs
    left, right, values = blocks[:, 0], blocks[:, 1], blocks[:, 2:]
    bit_left, bit_right = left[:, 0] & np.uint64(1), right[:, 0] & np.uint64(1)
    left[:, 0] &= _CLEAR_LOW
    right[:, 0] &= _CLEAR_LOW
    return Expansion(left, bit_left, right, bit_right, values[:, :, 0], values[:, :, 1])
