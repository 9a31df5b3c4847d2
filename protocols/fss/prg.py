"""The tree PRG of the DCF: one 128-bit seed -> two child seeds, two control bits, two 64-bit values.

Fixed-key AES in Matyas-Meyer-Oseas mode, ``H_i(s) = AES_K(s ^ i) ^ s ^ i`` for the tweaks
i = 0, 1, 2, is the standard way to expand many seeds at AES-NI speed (Guo et al., "Efficient and
Secure Multiparty Computation from Fixed-Key Block Ciphers", S&P 2020): one bulk ECB call expands a
whole tree level for every key at once. The key K is public; security rests on AES behaving as a
random permutation, as in every fixed-key FSS implementation.

Seeds are held as two ``(count,)`` uint64 arrays, the little-endian low and high halves of the
128-bit block: one-dimensional arrays keep every numpy pass over a tree level a single contiguous
loop (a ``(count, 2)`` array costs numpy one inner call per key in broadcasts, more than the AES).
The control bit of a child is the lowest bit of its block, which is then cleared, so children carry
127 random bits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_FIXED_KEY = hashlib.sha256(b"pinfer fss prg v1").digest()[:16]
MAX_VALUE_WORDS = 4
LEFT, RIGHT = 0, 1
"""The tweaks of the two child seeds; value word j of both children comes from tweak ``2 + j``
(the left child's in the block's low half, the right child's in its high half)."""
_CLEAR_LOW = np.uint64(0xFFFFFFFFFFFFFFFE)
_ONE = np.uint64(1)


def blocks_per_expansion(value_words: int = 1) -> int:
    """AES blocks one full seed expansion costs: two child seeds and one block per value word pair."""
    return 2 + value_words


def hash_blocks(low: np.ndarray, high: np.ndarray, tweaks: np.ndarray) -> np.ndarray:
    """``H_t(s)`` for every seed ``(low[k], high[k])`` and tweak: ``(count, len(tweaks), 2)`` uint64.

    ``tweaks`` is ``(len,)`` (the same for every seed) or ``(count, len)`` (per seed); a tweak xors
    into the low half only."""
    count = low.shape[0]
    tweaks = np.asarray(tweaks, dtype=np.uint64)
    width = tweaks.shape[-1]
    inputs = np.empty((count, width, 2), dtype=np.uint64)
    for j in range(width):
        np.bitwise_xor(low, tweaks[..., j], out=inputs[:, j, 0])
        inputs[:, j, 1] = high
    return mmo(inputs)


def mmo(inputs: np.ndarray) -> np.ndarray:
    """``AES_K(b) ^ b`` for every block of a C-contiguous uint64 array whose last axis is a block's
    two halves (the tweak already xored in): one ECB call."""
    out = bytearray(inputs.nbytes + 15)
    encryptor = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
    written = encryptor.update_into(memoryview(inputs).cast("B"), out)
    blocks = np.frombuffer(out, dtype=np.uint64, count=written // 8).reshape(inputs.shape)
    blocks ^= inputs
    return blocks


def split_seed(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hashed ``(count, 2)`` block as a child seed (low with its lowest bit cleared, high) and
    that bit, the child's control bit."""
    low, high = block[:, 0], block[:, 1]
    return low & _CLEAR_LOW, high, low & _ONE


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
    if not 1 <= value_words <= MAX_VALUE_WORDS:
        raise ValueError(f"value_words must lie in 1..{MAX_VALUE_WORDS}, got {value_words}")
    blocks = hash_blocks(seeds[:, 0], seeds[:, 1], np.arange(blocks_per_expansion(value_words), dtype=np.uint64))
    (left_low, left_high, bit_left), (right_low, right_high, bit_right) = split_seed(blocks[:, LEFT]), split_seed(blocks[:, RIGHT])
    return Expansion(np.stack([left_low, left_high], axis=1), bit_left, np.stack([right_low, right_high], axis=1),
                     bit_right, blocks[:, 2:, 0], blocks[:, 2:, 1])
