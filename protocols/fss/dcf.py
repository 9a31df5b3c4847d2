"""Distributed comparison functions: keys for ``f(x) = beta * [x < alpha]`` on n-bit unsigned inputs.

The construction of Boyle et al. (Eurocrypt 2021, Fig. 1): a GGM tree over the bits of x, most
significant first, with one correction word per level (a seed, two control bits and a value in
Z_2^64) and a final value word. Each party's key is its own 128-bit root seed plus the correction
words both parties share; the two evaluations at any x add up to f(x) mod 2^64, and either key alone
is pseudo-random. Every function here works on ``count`` independent keys at once, one tree level
per step, so a level costs one bulk AES call (:mod:`prg`) whatever the count.

Costs per key of ``n`` bits: evaluation ``3 n`` AES blocks per party, generation ``6 n`` at the
dealer; the correction words are ``correction_words(n)`` 64-bit words (24 n + 16 bytes for n <= 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import prg

MAX_BITS = 64

_ONE = np.uint64(1)


def correction_words(bits: int) -> int:
    """64-bit words of one key's correction words: n seeds (2 words), n values, 2n packed control
    bits, one final value."""
    return 3 * bits + -(-2 * bits // 64) + 1


@dataclass(frozen=True)
class Corrections:
    """The correction words shared by both keys of ``count`` DCFs with ``bits``-bit inputs."""

    bits: int
    seeds: np.ndarray  # (bits, count, 2) uint64
    values: np.ndarray  # (bits, count) uint64
    controls: np.ndarray  # (bits, count, 2) uint64 in {0, 1}: left, right
    final: np.ndarray  # (count,) uint64

    @property
    def count(self) -> int:
        return int(self.final.shape[0])

    def to_words(self) -> np.ndarray:
        """``(count, correction_words(bits))`` uint64, the wire form."""
        n, count = self.bits, self.count
        flat_bits = self.controls.transpose(1, 0, 2).reshape(count, 2 * n)
        packed_words = -(-2 * n // 64)
        padded = np.zeros((count, packed_words * 64), dtype=np.uint64)
        padded[:, : 2 * n] = flat_bits
        shifts = np.arange(64, dtype=np.uint64)
        packed = np.bitwise_or.reduce(padded.reshape(count, packed_words, 64) << shifts, axis=2)
        return np.concatenate(
            [self.seeds.transpose(1, 0, 2).reshape(count, 2 * n), self.values.T, packed, self.final[:, None]],
            axis=1,
        )

    @classmethod
    def from_words(cls, words: np.ndarray, bits: int) -> Corrections:
        """Inverse of :meth:`to_words`; raises ValueError on a wrong width."""
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"DCF input width must lie in 1..{MAX_BITS}, got {bits}")
        words = np.asarray(words, dtype=np.uint64)
        if words.ndim != 2 or words.shape[1] != correction_words(bits):
            raise ValueError(f"expected (count, {correction_words(bits)}) correction words, got {words.shape}")
        count, n = words.shape[0], bits
        seeds = np.ascontiguousarray(words[:, : 2 * n].reshape(count, n, 2).transpose(1, 0, 2))
        values = np.ascontiguousarray(words[:, 2 * n : 3 * n].T)
        packed = words[:, 3 * n : -1]
        unpacked = (packed[:, :, None] >> np.arange(64, dtype=np.uint64)) & _ONE
        controls = np.ascontiguousarray(unpacked.reshape(count, -1)[:, : 2 * n].reshape(count, n, 2).transpose(1, 0, 2))
        return cls(bits, seeds, values, controls, np.ascontiguousarray(words[:, -1]))


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"DCF input width must lie in 1..{MAX_BITS}, got {bits}")


def _bit(values: np.ndarray, position: int) -> np.ndarray:
    return (values >> np.uint64(position)) & _ONE


def _pick(choose_right: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    condition = choose_right.astype(bool)
    if left.ndim == 2:
        condition = condition[:, None]
    return np.where(condition, right, left)


def _signed(control: np.ndarray) -> np.ndarray:
    """(-1)^control in Z_2^64."""
    return _ONE - (control << _ONE)


def generate(
    alpha: np.ndarray, beta: np.ndarray, bits: int, root0: np.ndarray, root1: np.ndarray
) -> Corrections:
    """Correction words for ``count`` DCFs ``beta[j] * [x < alpha[j]]`` on ``bits``-bit x.

    ``alpha`` and ``beta`` are (count,) uint64 (``alpha < 2^bits``); ``root0``/``root1`` are the
    parties' (count, 2) uint64 root seeds, which must be secret and uniformly random.
    """
    _check_bits(bits)
    alpha = np.asarray(alpha, dtype=np.uint64)
    beta = np.asarray(beta, dtype=np.uint64)
    count = alpha.shape[0]
    if bits < MAX_BITS and bool((alpha >> np.uint64(bits)).any()):
        raise ValueError(f"alpha must lie below 2^{bits}")
    if beta.shape != (count,) or root0.shape != (count, 2) or root1.shape != (count, 2):
        raise ValueError("alpha, beta and the roots must describe the same number of keys")
    s0, s1 = root0.astype(np.uint64), root1.astype(np.uint64)
    t0, t1 = np.zeros(count, dtype=np.uint64), np.ones(count, dtype=np.uint64)
    v_alpha = np.zeros(count, dtype=np.uint64)
    seeds = np.empty((bits, count, 2), dtype=np.uint64)
    values = np.empty((bits, count), dtype=np.uint64)
    controls = np.empty((bits, count, 2), dtype=np.uint64)
    for level in range(bits):
        a = _bit(alpha, bits - 1 - level)  # 1: keep the right child, the left one is "lost"
        e0, e1 = prg.expand(s0), prg.expand(s1)
        lose0 = _pick(a, e0.seed_right, e0.seed_left)
        lose1 = _pick(a, e1.seed_right, e1.seed_left)
        seed_cw = lose0 ^ lose1
        sign = _signed(t1)
        value_cw = sign * (_pick(a, e1.value_right, e1.value_left) - _pick(a, e0.value_right, e0.value_left) - v_alpha)
        value_cw += a * sign * beta  # the lost child is the left one: every x below alpha there gets beta
        v_alpha = v_alpha - _pick(a, e1.value_left, e1.value_right) + _pick(a, e0.value_left, e0.value_right) + sign * value_cw
        control_left = e0.bit_left ^ e1.bit_left ^ a ^ _ONE
        control_right = e0.bit_right ^ e1.bit_right ^ a
        keep_control = _pick(a, control_left, control_right)
        s0 = _pick(a, e0.seed_left, e0.seed_right) ^ (seed_cw * t0[:, None])
        s1 = _pick(a, e1.seed_left, e1.seed_right) ^ (seed_cw * t1[:, None])
        t0 = _pick(a, e0.bit_left, e0.bit_right) ^ (t0 & keep_control)
        t1 = _pick(a, e1.bit_left, e1.bit_right) ^ (t1 & keep_control)
        seeds[level], values[level] = seed_cw, value_cw
        controls[level, :, 0], controls[level, :, 1] = control_left, control_right
    final = _signed(t1) * (s1[:, 1] - s0[:, 1] - v_alpha)
    return Corrections(bits, seeds, values, controls, final)


def evaluate(party: int, root: np.ndarray, corrections: Corrections, x: np.ndarray) -> np.ndarray:
    """Party ``party``'s (0 or 1) shares of ``beta[j] * [x[j] < alpha[j]]``, (count,) uint64."""
    if party not in (0, 1):
        raise ValueError(f"a DCF has parties 0 and 1, got {party}")
    bits = corrections.bits
    x = np.asarray(x, dtype=np.uint64)
    if x.shape != (corrections.count,) or root.shape != (corrections.count, 2):
        raise ValueError("x, the root seeds and the corrections must describe the same number of keys")
    sign = np.uint64(1) if party == 0 else np.uint64(0xFFFFFFFFFFFFFFFF)
    s = root.astype(np.uint64)
    t = np.full(corrections.count, party, dtype=np.uint64)
    total = np.zeros(corrections.count, dtype=np.uint64)
    for level in range(bits):
        e = prg.expand(s)
        seed_cw = corrections.seeds[level] * t[:, None]
        right = _bit(x, bits - 1 - level)
        value = _pick(right, e.value_left, e.value_right)
        total += sign * (value + t * corrections.values[level])
        s = _pick(right, e.seed_left, e.seed_right) ^ seed_cw
        control = _pick(right, corrections.controls[level, :, 0], corrections.controls[level, :, 1])
        t = _pick(right, e.bit_left, e.bit_right) ^ (t & control)
    total += sign * (s[:, 1] + t * corrections.final)
    return total
