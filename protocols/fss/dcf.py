"""Distributed comparison functions: keys for ``f(x) = beta * [x < alpha]`` on n-bit unsigned inputs.

The construction of Boyle et al. (Eurocrypt 2021, Fig. 1): a GGM tree over the bits of x, most
significant first, with one correction word per level (a seed, two control bits and a value in
Z_2^64, or m values for a payload ``beta`` of m words) and a final value word (m words). Each party's
key is its own 128-bit root seed plus the correction words both parties share; the two evaluations
at any x add up to f(x) mod 2^64, and either key alone is pseudo-random. Every function here works on
``count`` independent keys at once, one tree level per step, so a level costs one bulk AES call
(:mod:`prg`) whatever the count.

The per-level bookkeeping (choosing the path's child, applying the corrections, accumulating the
output) runs as compiled loops over the keys (numba), between bulk AES calls: numpy would make
some twenty passes over the key arrays per level, each costing more than the level's AES.

Costs per key of ``n`` bits and an m-word payload: evaluation ``(1 + m) n`` AES blocks per party (the
path's child seed and its value words), generation ``2 (2 + m) n`` at the dealer (both children of
both parties' paths); the correction words are ``correction_words(n, m)`` 64-bit words (24 n + 16
bytes for n <= 32 and m = 1).
"""

from __future__ import annotations

import numba
import numpy as np

from . import prg

MAX_BITS = 64

_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


def correction_words(bits: int, payload_words: int = 1) -> int:
    """64-bit words of one key's correction words: n seeds (2 words), n values of m words, 2n packed
    control bits, one final value of m words."""
    return (2 + payload_words) * bits + _packed_words(bits) + payload_words


def _packed_words(bits: int) -> int:
    return -(-2 * bits // 64)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"DCF input width must lie in 1..{MAX_BITS}, got {bits}")


class Corrections:
    """The correction words shared by both keys of ``count`` DCFs with ``bits``-bit inputs.

    Held in their wire form, one row of ``correction_words(bits, m)`` words per key: the level-l seed
    at words ``2l, 2l + 1``, its m values after all seeds, the control bits (left, right per level)
    packed after the values, the final m values last. Evaluation reads each level straight from the
    rows (possibly a strided view of a larger message), so nothing is copied or transposed."""

    def __init__(self, words: np.ndarray, bits: int, payload_words: int) -> None:
        self.words, self.bits, self.payload_words = words, bits, payload_words

    @property
    def count(self) -> int:
        return int(self.words.shape[0])

    def seed(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        return self.words[:, 2 * level], self.words[:, 2 * level + 1]

    def values(self, level: int) -> np.ndarray:
        start = 2 * self.bits + level * self.payload_words
        return self.words[:, start : start + self.payload_words]

    def control(self, level: int, side: int) -> np.ndarray:
        index = 2 * level + side
        word = self.words[:, (2 + self.payload_words) * self.bits + index // 64]
        return (word >> np.uint64(index % 64)) & _ONE

    @property
    def final(self) -> np.ndarray:
        return self.words[:, -self.payload_words :]

    def to_words(self) -> np.ndarray:
        """``(count, correction_words(bits, m))`` uint64, the wire form."""
        return self.words

    @classmethod
    def from_words(cls, words: np.ndarray, bits: int, payload_words: int = 1) -> Corrections:
        """The corrections in ``words`` (a view, not a copy); raises ValueError on a wrong width."""
        _check_bits(bits)
        words = np.asarray(words, dtype=np.uint64)
        expected = correction_words(bits, payload_words)
        if words.ndim != 2 or words.shape[1] != expected:
            raise ValueError(f"expected (count, {expected}) correction words, got {words.shape}")
        return cls(words, bits, payload_words)


_CHUNK_KEYS = 4096
"""Keys made or evaluated together through all levels: their correction rows (about 200 bytes
each) then stay in the core's cache from one level to the next."""
_ZERO = np.uint64(0)
_CLEAR_LOW = np.uint64(0xFFFFFFFFFFFFFFFE)


def generate(
    alpha: np.ndarray, beta: np.ndarray, bits: int, root0: np.ndarray, root1: np.ndarray
) -> Corrections:
    """Correction words for ``count`` DCFs ``beta[j] * [x < alpha[j]]`` on ``bits``-bit x.

    ``alpha`` is (count,) uint64 (``alpha < 2^bits``), ``beta`` (count,) or (count, m) uint64 for an
    m-word payload; ``root0``/``root1`` are the parties' (count, 2) uint64 root seeds, which must be
    secret and uniformly random.
    """
    _check_bits(bits)
    alpha = np.ascontiguousarray(alpha, dtype=np.uint64)
    beta = np.asarray(beta, dtype=np.uint64)
    count = alpha.shape[0]
    if beta.ndim == 1:
        beta = beta[:, None]
    m = beta.shape[1] if beta.ndim == 2 else 0
    if bits < MAX_BITS and bool((alpha >> np.uint64(bits)).any()):
        raise ValueError(f"alpha must lie below 2^{bits}")
    if beta.shape != (count, m) or not 1 <= m <= prg.MAX_VALUE_WORDS or root0.shape != (count, 2) \
            or root1.shape != (count, 2):
        raise ValueError("alpha, beta and the roots must describe the same number of keys")
    words = np.zeros((count, correction_words(bits, m)), dtype=np.uint64)
    for start in range(0, count, _CHUNK_KEYS):
        rows = slice(start, start + _CHUNK_KEYS)
        _generate_chunk(alpha[rows], np.ascontiguousarray(beta[rows]), bits, root0[rows], root1[rows], words[rows])
    return Corrections(words, bits, m)


def _generate_chunk(alpha: np.ndarray, beta: np.ndarray, bits: int, root0: np.ndarray, root1: np.ndarray,
                    words: np.ndarray) -> None:
    count, m = alpha.shape[0], beta.shape[1]
    # both parties' seeds side by side, so each level is one AES call: rows [0, count) party 0
    low = np.concatenate([root0[:, 0], root1[:, 0]]).astype(np.uint64)
    high = np.concatenate([root0[:, 1], root1[:, 1]]).astype(np.uint64)
    t = np.concatenate([np.zeros(count, dtype=np.uint64), np.ones(count, dtype=np.uint64)])
    v_alpha = np.zeros((count, m), dtype=np.uint64)
    tweaks = np.arange(prg.blocks_per_expansion(m), dtype=np.uint64)
    for level in range(bits):
        blocks = prg.hash_blocks(low, high, tweaks)
        _generate_level(blocks, alpha, np.uint64(bits - 1 - level), beta, level, bits, words, t, low, high, v_alpha)
    final = _final_values(low, high, m)
    sign = np.uint64(1) - (t[count:] << np.uint64(1))
    words[:, -m:] = sign[:, None] * (final[count:] - final[:count] - v_alpha)


@numba.njit(cache=True, nogil=True)
def _generate_level(blocks, alpha, shift, beta, level, bits, words, t, low, high, v_alpha):  # pragma: no cover
    """One tree level of ``generate`` for every key (rows k and count + k: parties 0 and 1)."""
    count, m = alpha.shape[0], beta.shape[1]
    value_base, control_base = 2 * bits, (2 + m) * bits
    for k in range(count):
        a = (alpha[k] >> shift) & _ONE  # 1: keep the right child; the left one is "lost"
        keep, lose = (1, 0) if a else (0, 1)
        p0, p1 = k, count + k
        bit_l0, bit_r0 = blocks[p0, 0, 0] & _ONE, blocks[p0, 1, 0] & _ONE
        bit_l1, bit_r1 = blocks[p1, 0, 0] & _ONE, blocks[p1, 1, 0] & _ONE
        seed_low = (blocks[p0, lose, 0] ^ blocks[p1, lose, 0]) & _CLEAR_LOW
        seed_high = blocks[p0, lose, 1] ^ blocks[p1, lose, 1]
        sign = _ONE - (t[p1] << _ONE)
        for j in range(m):
            lost = blocks[p1, 2 + j, lose] - blocks[p0, 2 + j, lose] - v_alpha[k, j]
            value_cw = sign * lost + a * sign * beta[k, j]
            v_alpha[k, j] = v_alpha[k, j] - blocks[p1, 2 + j, keep] + blocks[p0, 2 + j, keep] + sign * value_cw
            words[k, value_base + level * m + j] = value_cw
        control_left = bit_l0 ^ bit_l1 ^ a ^ _ONE
        control_right = bit_r0 ^ bit_r1 ^ a
        keep_control = control_right if a else control_left
        for p in (p0, p1):
            on = _ZERO - t[p]
            low[p] = (blocks[p, keep, 0] & _CLEAR_LOW) ^ (seed_low & on)
            high[p] = blocks[p, keep, 1] ^ (seed_high & on)
            t[p] = (blocks[p, keep, 0] & _ONE) ^ (t[p] & keep_control)
        words[k, 2 * level], words[k, 2 * level + 1] = seed_low, seed_high
        index = 2 * level
        words[k, control_base + index // 64] |= control_left << np.uint64(index % 64)
        index += 1
        words[k, control_base + index // 64] |= control_right << np.uint64(index % 64)


def _final_values(low: np.ndarray, high: np.ndarray, m: int) -> np.ndarray:
    """The leaf's m value words: the seed's high half for one word, its left values for more."""
    if m == 1:
        return high[:, None]
    return prg.hash_blocks(low, high, np.arange(2, 2 + m, dtype=np.uint64))[:, :, 0]


def evaluate(party: int, root: np.ndarray, corrections: Corrections, x: np.ndarray) -> np.ndarray:
    """Party ``party``'s (0 or 1) shares of ``beta[j] * [x[j] < alpha[j]]``: (count,) uint64 for a
    one-word payload, (count, m) for m words. ``x`` of shape (count, P) evaluates each key at P points
    (shares of every ``beta[j] [x[j, i] < alpha[j]]``, shaped (count, P) or (count, P, m)): a key may
    be evaluated anywhere, so one key serves every threshold test of one masked value."""
    if party not in (0, 1):
        raise ValueError(f"a DCF has parties 0 and 1, got {party}")
    bits = corrections.bits
    x = np.asarray(x, dtype=np.uint64)
    count, m = corrections.count, corrections.payload_words
    if x.ndim not in (1, 2) or x.shape[0] != count or root.shape != (count, 2):
        raise ValueError("x, the root seeds and the corrections must describe the same number of keys")
    points = x.reshape(count, -1)
    per_key = points.shape[1]
    sign = _ONE if party == 0 else _ALL
    total = np.empty((count * per_key, m), dtype=np.uint64)
    chunk = max(1, _CHUNK_KEYS // per_key)
    for start in range(0, count, chunk):
        rows = slice(start, start + chunk)
        paths = slice(start * per_key, (start + chunk) * per_key)
        total[paths] = _evaluate_chunk(party, sign, root[rows], corrections.words[rows], bits, m,
                                       np.ascontiguousarray(points[rows]).reshape(-1), per_key)
    shape = x.shape if m == 1 else x.shape + (m,)
    return total.reshape(shape)


def _evaluate_chunk(party: int, sign: np.uint64, root: np.ndarray, words: np.ndarray, bits: int, m: int,
                    x: np.ndarray, per_key: int) -> np.ndarray:
    """Every path of a chunk: path i evaluates key ``i // per_key`` at ``x[i]``."""
    count = x.shape[0]
    low = np.repeat(root[:, 0].astype(np.uint64), per_key)
    high = np.repeat(root[:, 1].astype(np.uint64), per_key)
    t = np.full(count, party, dtype=np.uint64)
    total = np.zeros((count, m), dtype=np.uint64)
    return _walk_paths(sign, words, bits, x, per_key, 0, low, high, t, total)


def _walk_paths(sign: np.uint64, words: np.ndarray, bits: int, x: np.ndarray, per_key: int, first_level: int,
                low: np.ndarray, high: np.ndarray, t: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Paths standing at ``first_level`` (their seeds, control bits and value sums), each followed
    down x's bits to its leaf; path i belongs to key ``i // per_key``. Returns the paths' shares."""
    m = total.shape[1]
    inputs = np.empty((x.shape[0], 1 + m, 2), dtype=np.uint64)
    for level in range(first_level, bits):
        shift = np.uint64(bits - 1 - level)
        _path_inputs(low, high, x, shift, inputs)
        blocks = prg.mmo(inputs)
        _evaluate_level(blocks, x, shift, words, per_key, level, bits, sign, t, low, high, total)
    final = np.repeat(words[:, -m:], per_key, axis=0)
    total += sign * (_final_values(low, high, m) + (final & (_ZERO - t)[:, None]))
    return total


@numba.njit(cache=True, nogil=True)
def _path_inputs(low, high, x, shift, inputs):  # pragma: no cover
    """The AES inputs of one level: the child on x's path (tweak 0 or 1) and the value words
    (tweaks 2..): only what the path needs is hashed."""
    for k in range(x.shape[0]):
        inputs[k, 0, 0] = low[k] ^ ((x[k] >> shift) & _ONE)
        inputs[k, 0, 1] = high[k]
        for j in range(1, inputs.shape[1]):
            inputs[k, j, 0] = low[k] ^ np.uint64(j + 1)
            inputs[k, j, 1] = high[k]


@numba.njit(cache=True, nogil=True)
def _evaluate_level(blocks, x, shift, words, per_key, level, bits, sign, t, low, high, total):  # pragma: no cover
    """One tree level of ``evaluate`` for every path (path k follows key ``k // per_key``)."""
    m = total.shape[1]
    value_base, control_base = 2 * bits, (2 + m) * bits
    index = 2 * level
    for k in range(x.shape[0]):
        key = k // per_key
        right = (x[k] >> shift) & _ONE
        on = _ZERO - t[k]
        side = 1 if right else 0
        for j in range(m):
            total[k, j] += sign * (blocks[k, 1 + j, side] + (words[key, value_base + level * m + j] & on))
        child = blocks[k, 0, 0]
        low[k] = (child & _CLEAR_LOW) ^ (words[key, 2 * level] & on)
        high[k] = blocks[k, 0, 1] ^ (words[key, 2 * level + 1] & on)
        bit_index = index + side
        control = (words[key, control_base + bit_index // 64] >> np.uint64(bit_index % 64)) & _ONE
        t[k] = (child & _ONE) ^ (t[k] & control)


def evaluate_ladder(party: int, root: np.ndarray, corrections: Corrections, x: np.ndarray,
                    step_bits: int, rungs: int | None = None) -> np.ndarray:
    """Party ``party``'s shares of ``beta[k] * [(x[k] - j 2^step_bits) mod 2^bits < alpha[k]]`` for
    ``j`` in ``0 .. rungs - 1`` (default every multiple: ``2^(bits - step_bits)``): ``(count, rungs)``
    uint64 (one-word payloads only), the same as :func:`evaluate` at those points.

    The points share their low ``step_bits`` bits and their high ones run over a window of ``rungs``
    consecutive values, so the top ``bits - step_bits`` levels are expanded only at the nodes above
    the window (one hash of three blocks per node gives both children and their values; two nodes a
    level until the window's width) and the low levels are walked point by point. For a spline's 31
    segment boundaries on 8-bit inputs that is 285 AES blocks per key instead of 496; the 33 of a
    spline's whole range on a 20-bit lane cost 375 instead of 1,320."""
    if party not in (0, 1):
        raise ValueError(f"a DCF has parties 0 and 1, got {party}")
    bits = corrections.bits
    if corrections.payload_words != 1 or not 0 <= step_bits < bits:
        raise ValueError("a ladder needs one-word payloads and 0 <= step_bits < bits")
    every = 1 << (bits - step_bits)
    rungs = every if rungs is None else rungs
    if not 1 <= rungs <= every:
        raise ValueError(f"a ladder has 1 .. {every} rungs at this step, got {rungs}")
    x = np.ascontiguousarray(x, dtype=np.uint64)
    count = corrections.count
    if x.shape != (count,) or root.shape != (count, 2):
        raise ValueError("x, the root seeds and the corrections must describe the same number of keys")
    sign = _ONE if party == 0 else _ALL
    out = np.empty((count, rungs), dtype=np.uint64)
    chunk = max(1, _CHUNK_KEYS * 4 // rungs)
    for start in range(0, count, chunk):
        rows = slice(start, start + chunk)
        out[rows] = _ladder_chunk(party, sign, root[rows], corrections.words[rows], bits, step_bits, rungs, x[rows])
    return out


def ladder_widths(bits: int, step_bits: int, rungs: int) -> list[int]:
    """The nodes :func:`evaluate_ladder` holds per key below each of its top ``bits - step_bits``
    levels: the most that a window of ``rungs`` consecutive leaves can touch."""
    widths = []
    for level in range(1, bits - step_bits + 1):
        leaves_per_node = bits - step_bits - level
        widths.append(min(1 << level, ((rungs - 1 + (1 << leaves_per_node) - 1) >> leaves_per_node) + 1))
    return widths


def ladder_blocks(bits: int, step_bits: int, rungs: int) -> int:
    """AES blocks :func:`evaluate_ladder` hashes per key."""
    nodes = [1] + ladder_widths(bits, step_bits, rungs)[:-1]
    return 3 * sum(nodes) + 2 * rungs * step_bits


def _ladder_chunk(party: int, sign: np.uint64, root: np.ndarray, words: np.ndarray, bits: int,
                  step_bits: int, rungs: int, x: np.ndarray) -> np.ndarray:
    count, top_levels = x.shape[0], bits - step_bits
    low = root[:, 0].astype(np.uint64).reshape(count, 1)
    high = root[:, 1].astype(np.uint64).reshape(count, 1)
    t = np.full((count, 1), party, dtype=np.uint64)
    total = np.zeros((count, 1), dtype=np.uint64)
    tweaks = np.arange(prg.blocks_per_expansion(1), dtype=np.uint64)
    # the window's leaves (each 2^step_bits wide) start at the lowest rung's: x_high - (rungs - 1)
    first_leaf = ((x >> np.uint64(step_bits)) - np.uint64(rungs - 1)) & np.uint64((1 << top_levels) - 1)
    for level, width in enumerate(ladder_widths(bits, step_bits, rungs)):
        blocks = prg.hash_blocks(low.reshape(-1), high.reshape(-1), tweaks).reshape(count, low.shape[1], 3, 2)
        offsets = ((first_leaf >> np.uint64(top_levels - level - 1)) & _ONE).astype(np.int64)
        low, high, t, total = _expand_window(blocks, words, level, bits, sign, t, total, offsets, width)
    by_leaf = _walk_paths(sign, words, bits, np.repeat(x, rungs), rungs, top_levels, low.reshape(-1),
                          high.reshape(-1), t.reshape(-1), total.reshape(-1, 1)).reshape(count, rungs)
    # leaf slot i holds x_high - (rungs - 1) + i: rung j is slot rungs - 1 - j
    return np.ascontiguousarray(by_leaf[:, ::-1])


@numba.njit(cache=True, nogil=True)
def _expand_window(blocks, words, level, bits, sign, t, total, offsets, width):  # pragma: no cover
    """The ``width`` consecutive children, from child ``offsets[k]`` on, of a key's nodes at one
    level (node slot n's children are 2n and 2n + 1, counted cyclically when the level is whole)."""
    count, nodes = t.shape
    value_base, control_base = 2 * bits, 3 * bits
    low = np.empty((count, width), dtype=np.uint64)
    high = np.empty((count, width), dtype=np.uint64)
    child_t = np.empty((count, width), dtype=np.uint64)
    child_total = np.empty((count, width), dtype=np.uint64)
    for k in range(count):
        seed_low, seed_high, value_cw = words[k, 2 * level], words[k, 2 * level + 1], words[k, value_base + level]
        for c in range(width):
            column = (offsets[k] + c) % (2 * nodes)
            n, side = column // 2, column % 2
            on = _ZERO - t[k, n]
            child = blocks[k, n, side, 0]
            child_total[k, c] = total[k, n] + sign * (blocks[k, n, 2, side] + (value_cw & on))
            low[k, c] = (child & _CLEAR_LOW) ^ (seed_low & on)
            high[k, c] = blocks[k, n, side, 1] ^ (seed_high & on)
            bit_index = 2 * level + side
            control = (words[k, control_base + bit_index // 64] >> np.uint64(bit_index % 64)) & _ONE
            child_t[k, c] = (child & _ONE) ^ (t[k, n] & control)
    return low, high, child_t, child_total
