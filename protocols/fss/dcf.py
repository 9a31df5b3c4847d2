"""Distributed comparison functions: keys for ``f(x) = beta * [x < alpha]`` on n-bit unsigned inputs.

The construction of Boyle et al. (Eurocrypt 2021, Fig. 1): a GGM tree over the bits of x, most
significant first, with one correction word per level (a seed, two control bits and a value in
Z_2^64, or m values for a payload ``beta`` of m words) and a final value word (m words). Each party's
key is its own 128-bit root seed plus the correction words both parties share; the two evaluations
at any x add up to f(x) mod 2^64, and either key alone is pseudo-random. Every function here works on
``count`` independent keys at once, one tree level per step, so a level costs one bulk AES call
(:mod:`prg`) whatever the count.

Costs per key of ``n`` bits and an m-word payload: evaluation ``(1 + m) n`` AES blocks per party (the
path's child seed and its value words), generation ``2 (2 + m) n`` at the dealer (both children of
both parties' paths); the correction words are ``correction_words(n, m)`` 64-bit words (24 n + 16
bytes for n <= 32 and m = 1).
"""

from __future__ import annotations

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


def _bit(values: np.ndarray, position: int) -> np.ndarray:
    return (values >> np.uint64(position)) & _ONE


def _pick(choose_right: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``right`` where the 0/1 selector is 1, else ``left``, as a mask blend (no broadcast over a
    word axis: ``left``/``right`` may be (count,) or (count, m) with a (count,) selector)."""
    mask = np.negative(choose_right)  # all ones where 1
    if left.ndim == 2:
        return left ^ ((left ^ right) & mask[:, None])
    return left ^ ((left ^ right) & mask)


def _signed(control: np.ndarray) -> np.ndarray:
    """(-1)^control in Z_2^64."""
    return _ONE - (control << _ONE)


def _path_values(blocks: np.ndarray, right: np.ndarray, first: int, m: int) -> np.ndarray:
    """The m value words of each seed's chosen child from its hashed value blocks ``first..``."""
    return _pick(right, blocks[:, first : first + m, 0], blocks[:, first : first + m, 1])


def generate(
    alpha: np.ndarray, beta: np.ndarray, bits: int, root0: np.ndarray, root1: np.ndarray
) -> Corrections:
    """Correction words for ``count`` DCFs ``beta[j] * [x < alpha[j]]`` on ``bits``-bit x.

    ``alpha`` is (count,) uint64 (``alpha < 2^bits``), ``beta`` (count,) or (count, m) uint64 for an
    m-word payload; ``root0``/``root1`` are the parties' (count, 2) uint64 root seeds, which must be
    secret and uniformly random.
    """
    _check_bits(bits)
    alpha = np.asarray(alpha, dtype=np.uint64)
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
    value_base, control_base = 2 * bits, (2 + m) * bits
    # both parties' seeds side by side, so each level is one AES call: rows [0, count) party 0
    low = np.concatenate([root0[:, 0], root1[:, 0]])
    high = np.concatenate([root0[:, 1], root1[:, 1]])
    t = np.concatenate([np.zeros(count, dtype=np.uint64), np.ones(count, dtype=np.uint64)])
    v_alpha = np.zeros((count, m), dtype=np.uint64)
    tweaks = np.arange(prg.blocks_per_expansion(m), dtype=np.uint64)
    for level in range(bits):
        a = _bit(alpha, bits - 1 - level)  # 1: keep the right child, the left one is "lost"
        blocks = prg.hash_blocks(low, high, tweaks)
        left_low, left_high, left_bit = prg.split_seed(blocks[:, prg.LEFT])
        right_low, right_high, right_bit = prg.split_seed(blocks[:, prg.RIGHT])
        a2 = np.concatenate([a, a])
        lose_low, lose_high = _pick(a2, right_low, left_low), _pick(a2, right_high, left_high)
        seed_low = lose_low[:count] ^ lose_low[count:]
        seed_high = lose_high[:count] ^ lose_high[count:]
        lose_values = _path_values(blocks, 1 - a2, 2, m)
        keep_values = _path_values(blocks, a2, 2, m)
        sign = _signed(t[count:])[:, None]
        value_cw = sign * (lose_values[count:] - lose_values[:count] - v_alpha) + a[:, None] * sign * beta
        v_alpha = v_alpha - keep_values[count:] + keep_values[:count] + sign * value_cw
        control_left = left_bit[:count] ^ left_bit[count:] ^ a ^ _ONE
        control_right = right_bit[:count] ^ right_bit[count:] ^ a
        keep_control = _pick(a, control_left, control_right)
        on = np.negative(t)  # all ones where the control bit is set: the seed correction applies
        low = _pick(a2, left_low, right_low) ^ (np.concatenate([seed_low, seed_low]) & on)
        high = _pick(a2, left_high, right_high) ^ (np.concatenate([seed_high, seed_high]) & on)
        t = _pick(a2, left_bit, right_bit) ^ (t & np.concatenate([keep_control, keep_control]))
        words[:, 2 * level], words[:, 2 * level + 1] = seed_low, seed_high
        words[:, value_base + level * m : value_base + (level + 1) * m] = value_cw
        for side, control in ((0, control_left), (1, control_right)):
            index = 2 * level + side
            words[:, control_base + index // 64] |= control << np.uint64(index % 64)
    final = _final_values(low, high, m)
    words[:, -m:] = _signed(t[count:])[:, None] * (final[count:] - final[:count] - v_alpha)
    return Corrections(words, bits, m)


def _final_values(low: np.ndarray, high: np.ndarray, m: int) -> np.ndarray:
    """The leaf's m value words: the seed's high half for one word, its left values for more."""
    if m == 1:
        return high[:, None]
    return prg.hash_blocks(low, high, np.arange(2, 2 + m, dtype=np.uint64))[:, :, 0]


def evaluate(party: int, root: np.ndarray, corrections: Corrections, x: np.ndarray) -> np.ndarray:
    """Party ``party``'s (0 or 1) shares of ``beta[j] * [x[j] < alpha[j]]``: (count,) uint64 for a
    one-word payload, (count, m) for m words."""
    if party not in (0, 1):
        raise ValueError(f"a DCF has parties 0 and 1, got {party}")
    bits = corrections.bits
    x = np.asarray(x, dtype=np.uint64)
    if x.shape != (corrections.count,) or root.shape != (corrections.count, 2):
        raise ValueError("x, the root seeds and the corrections must describe the same number of keys")
    m = corrections.payload_words
    sign = _ONE if party == 0 else _ALL
    low, high = root[:, 0].astype(np.uint64), root[:, 1].astype(np.uint64)
    t = np.full(corrections.count, party, dtype=np.uint64)
    total = np.zeros((corrections.count, m), dtype=np.uint64)
    tweaks = np.empty((corrections.count, 1 + m), dtype=np.uint64)
    tweaks[:, 1:] = np.arange(2, 2 + m, dtype=np.uint64)
    for level in range(bits):
        right = _bit(x, bits - 1 - level)
        tweaks[:, 0] = right  # tweak 0 or 1: only the child on x's path is hashed
        blocks = prg.hash_blocks(low, high, tweaks)
        child_low, child_high, child_bit = prg.split_seed(blocks[:, 0])
        on = np.negative(t)
        total += sign * (_path_values(blocks, right, 1, m) + (corrections.values(level) & on[:, None]))
        seed_low, seed_high = corrections.seed(level)
        low, high = child_low ^ (seed_low & on), child_high ^ (seed_high & on)
        control = _pick(right, corrections.control(level, 0), corrections.control(level, 1))
        t = child_bit ^ (t & control)
    total += sign * (_final_values(low, high, m) + (corrections.final & np.negative(t)[:, None]))
    return total[:, 0] if m == 1 else total
