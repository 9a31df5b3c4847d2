"""Distributed point functions: keys for ``f(x) = beta * [x == alpha]`` on n-bit inputs, in Z_2^64.

The construction of Boyle, Gilboa and Ishai ("Function Secret Sharing: Improvements and Extensions",
CCS 2016, Fig. 1): a GGM tree over the bits of x, most significant first, with one correction word
per level (a seed and two control bits) and one final word that turns the leaf at ``alpha`` into
``beta``. Each party's key is its own 128-bit root seed plus the correction words both parties share,
so a key is ``key_words(n)`` 64-bit words (36 words, 288 bytes, for n = 16); either key alone is
pseudo-random, and the two evaluations add up to ``f(x)`` mod 2^64 at every x.

:func:`evaluate_domain` expands a key over the first ``size`` points of the domain at once, one tree
level per step: 2 AES blocks per node and one per leaf (:mod:`prg`), about ``3 size`` blocks per key.
A vocabulary-sized one-hot share from a few hundred bytes is what it is for
(:mod:`pinfer.protocols.token_input`).
"""

from __future__ import annotations

import numpy as np

from . import prg

MAX_BITS = 32
_ONE = np.uint64(1)
_CLEAR_LOW = np.uint64(0xFFFFFFFFFFFFFFFE)  # a seed's lowest bit is its control bit, not key material
_VALUE_TWEAK = np.array([2], dtype=np.uint64)
_CHILD_TWEAKS = np.array([prg.LEFT, prg.RIGHT], dtype=np.uint64)
# Nodes expanded at once when a chunk of keys is evaluated over its domain: a level's blocks then
# take some 100 MB, whatever the number of keys.
_NODES_PER_STEP = 1 << 22


def key_words(bits: int) -> int:
    """64-bit words of one party's key: its root seed (2), n correction seeds (2 each), the 2n control
    bits packed, and the final word."""
    _check_bits(bits)
    return 2 + 2 * bits + _packed_words(bits) + 1


def _packed_words(bits: int) -> int:
    return -(-2 * bits // 64)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"DPF input width must lie in 1..{MAX_BITS}, got {bits}")


def generate(alpha: np.ndarray, beta: np.ndarray, bits: int, root0: np.ndarray,
             root1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both parties' keys for ``count`` DPFs ``beta[j] * [x == alpha[j]]`` on ``bits``-bit x.

    ``alpha`` and ``beta`` are (count,) uint64 (``alpha < 2^bits``); ``root0`` and ``root1`` the
    parties' (count, 2) uint64 root seeds, secret and uniformly random. Returns two
    ``(count, key_words(bits))`` uint64 arrays, party 0's and party 1's keys.
    """
    _check_bits(bits)
    alpha = np.ascontiguousarray(alpha, dtype=np.uint64)
    beta = np.ascontiguousarray(beta, dtype=np.uint64)
    count = alpha.shape[0]
    if alpha.ndim != 1 or beta.shape != (count,) or root0.shape != (count, 2) or root1.shape != (count, 2):
        raise ValueError("alpha, beta and the roots must describe the same number of keys")
    if bool((alpha >> np.uint64(bits)).any()):
        raise ValueError(f"alpha must lie below 2^{bits}")
    words = np.zeros((count, key_words(bits)), dtype=np.uint64)
    seeds = [(root0[:, 0] & _CLEAR_LOW, root0[:, 1].copy()), (root1[:, 0] & _CLEAR_LOW, root1[:, 1].copy())]
    words[:, 0:2] = root0
    control = [np.zeros(count, dtype=np.uint64), np.ones(count, dtype=np.uint64)]
    packed = words[:, 2 + 2 * bits : 2 + 2 * bits + _packed_words(bits)]
    for level in range(bits):
        go_right = (alpha >> np.uint64(bits - 1 - level)) & _ONE
        children = [_children(low, high) for low, high in seeds]  # per party: (low, high, bit) per side
        lose_low = [np.where(go_right == 1, left[0], right[0]) for left, right in children]
        lose_high = [np.where(go_right == 1, left[1], right[1]) for left, right in children]
        seed_low, seed_high = lose_low[0] ^ lose_low[1], lose_high[0] ^ lose_high[1]
        bit_left = children[0][0][2] ^ children[1][0][2] ^ go_right ^ _ONE
        bit_right = children[0][1][2] ^ children[1][1][2] ^ go_right
        words[:, 2 + 2 * level] = seed_low
        words[:, 3 + 2 * level] = seed_high
        packed[:, (2 * level) // 64] |= bit_left << np.uint64((2 * level) % 64)
        packed[:, (2 * level + 1) // 64] |= bit_right << np.uint64((2 * level + 1) % 64)
        keep_bit = np.where(go_right == 1, bit_right, bit_left)
        for party in range(2):
            left, right = children[party]
            mask = np.uint64(0) - control[party]  # all ones where the control bit is set
            low = np.where(go_right == 1, right[0], left[0]) ^ (mask & seed_low)
            high = np.where(go_right == 1, right[1], left[1]) ^ (mask & seed_high)
            bit = np.where(go_right == 1, right[2], left[2]) ^ (control[party] & keep_bit)
            seeds[party], control[party] = (low, high), bit
    converted = [_convert(low, high) for low, high in seeds]
    final = beta - converted[0] + converted[1]
    words[:, -1] = np.where(control[1] == 1, np.uint64(0) - final, final)
    other = words.copy()
    other[:, 0:2] = root1
    return words, other


def _children(low: np.ndarray, high: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    blocks = prg.hash_blocks(low, high, _CHILD_TWEAKS)
    return prg.split_seed(blocks[:, prg.LEFT]), prg.split_seed(blocks[:, prg.RIGHT])


def _convert(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A leaf seed's element of Z_2^64 (its value-tweak hash, low word)."""
    return prg.hash_blocks(low, high, _VALUE_TWEAK)[:, 0, 0].copy()


def evaluate_domain(party: int, keys: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Party ``party``'s shares of every key's function at x = 0 .. size - 1: ``(count, size)`` uint64.

    Only the nodes whose subtrees reach below ``size`` are expanded."""
    _check_bits(bits)
    if party not in (0, 1):
        raise ValueError(f"a DPF has parties 0 and 1, not {party}")
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.ndim != 2 or keys.shape[1] != key_words(bits):
        raise ValueError(f"expected (count, {key_words(bits)}) key words, got {keys.shape}")
    if not 1 <= size <= 1 << bits:
        raise ValueError(f"the domain of a {bits}-bit DPF holds 1..2^{bits} points, not {size}")
    count = keys.shape[0]
    out = np.empty((count, size), dtype=np.uint64)
    per_step = max(1, _NODES_PER_STEP // (1 << bits))
    for start in range(0, count, per_step):
        rows = slice(start, start + per_step)
        out[rows] = _expand(party, keys[rows], bits, size)
    return out


def _expand(party: int, keys: np.ndarray, bits: int, size: int) -> np.ndarray:
    count = keys.shape[0]
    low = (keys[:, 0] & _CLEAR_LOW)[:, None]
    high = keys[:, 1][:, None].copy()
    control = np.full((count, 1), party, dtype=np.uint64)
    packed = keys[:, 2 + 2 * bits : 2 + 2 * bits + _packed_words(bits)]
    for level in range(bits):
        nodes = low.shape[1]
        blocks = prg.hash_blocks(low.reshape(-1), high.reshape(-1), _CHILD_TWEAKS).reshape(count, nodes, 2, 2)
        child_low = blocks[..., 0] & _CLEAR_LOW  # (count, nodes, side)
        child_high = blocks[..., 1]
        child_bit = blocks[..., 0] & _ONE
        mask = (np.uint64(0) - control)[..., None]
        child_low ^= mask & keys[:, 2 + 2 * level][:, None, None]
        child_high ^= mask & keys[:, 3 + 2 * level][:, None, None]
        for side in (prg.LEFT, prg.RIGHT):
            index = 2 * level + side
            correction = (packed[:, index // 64] >> np.uint64(index % 64)) & _ONE
            child_bit[..., side] ^= control & correction[:, None]
        needed = -(-size // (1 << (bits - 1 - level)))
        low = child_low.reshape(count, -1)[:, :needed]
        high = child_high.reshape(count, -1)[:, :needed]
        control = child_bit.reshape(count, -1)[:, :needed]
    values = _convert(np.ascontiguousarray(low).reshape(-1), np.ascontiguousarray(high).reshape(-1)).reshape(count, -1)
    values += control * keys[:, -1][:, None]
    return np.uint64(0) - values if party == 1 else values


def evaluate_point(party: int, key: np.ndarray, bits: int, x: int) -> int:
    """One key's share at one point, walking the path alone: the slow reference of :func:`evaluate_domain`."""
    key = np.asarray(key, dtype=np.uint64).reshape(1, key_words(bits))
    low, high = key[:, 0] & _CLEAR_LOW, key[:, 1].copy()
    control = int(party)
    for level in range(bits):
        side = (x >> (bits - 1 - level)) & 1
        child_low, child_high, child_bit = _children(low, high)[side]
        index = 2 * level + side
        correction = int(key[0, 2 + 2 * bits + index // 64] >> np.uint64(index % 64)) & 1
        if control:
            child_low = child_low ^ key[:, 2 + 2 * level]
            child_high = child_high ^ key[:, 3 + 2 * level]
        low, high, control = child_low, child_high, int(child_bit[0]) ^ (control & correction)
    value = (int(_convert(low, high)[0]) + control * int(key[0, -1])) % (1 << 64)
    return (-value) % (1 << 64) if party == 1 else value
