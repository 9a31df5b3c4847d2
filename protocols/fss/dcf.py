"""Distributed comparison functions: keys for ``f(x) = beta * [x < alpha]`` on n-bit unsigned inputs.

The construction of Boyle et al. (Eurocrypt 2021, Fig. 1): a GGM tree over the bits of x, most
significant first, with one correction word per level (a seed, two control bits and a value in
Z_2^64, or m values for a payload ``beta`` of m words) and a final value word (m words). Each party's key is its own 128-bit root seed plus the correction
words both parties share; the two evaluations at any x add up to f(x) mod 2^64, and either key alone
is pseudo-random. Every function here works on ``count`` independent keys at once, one tree level
per step, so a level costs one bulk AES call (:mod:`prg`) whatever the count.

Costs per key of ``n`` bits and an m-word payload: evaluation ``(2 + m) n`` AES blocks per party,
generation twice that at the dealer; the correction words are ``correction_words(n, m)`` 64-bit words
(24 n + 16 bytes for n <= 32 and m = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import prg

MAX_BITS = 64

_ONE = np.uint64(1)


def correction_words(bits: int, payload_words: int = 1) -> int:
    """64-bit words of one key's correction words: n seeds (2 words), n values of m words, 2n packed
    control bits, one final value of m words."""
    return (2 + payload_words) * bits + -(-2 * bits // 64) + payload_words


@dataclass(frozen=True)
class Corrections:
    """The correction words shared by both keys of ``count`` DCFs with ``bits``-bit inputs."""

    bits: int
    seeds: np.ndarray  # (bits, count, 2) uint64
    values: np.ndarray  # (bits, count, m) uint64
    controls: np.ndarray  # (bits, count, 2) uint64 in {0, 1}: left, right
    final: np.ndarray  # (count, m) uint64

    @property
    def count(self) -> int:
        return int(self.final.shape[0])

    @property
    def payload_words(self) -> int:
        return int(self.final.shape[1])

    def to_words(self) -> np.ndarray:
        """``(count, correction_words(bits, m))`` uint64, the wire form."""
        n, count, m = self.bits, self.count, self.payload_words
        flat_bits = self.controls.transpose(1, 0, 2).reshape(count, 2 * n)
        packed_words = -(-2 * n // 64)
        padded = np.zeros((count, packed_words * 64), dtype=np.uint64)
        padded[:, : 2 * n] = flat_bits
        shifts = np.arange(64, dtype=np.uint64)
        packed = np.bitwise_or.reduce(padded.reshape(count, packed_words, 64) << shifts, axis=2)
        return np.concatenate(
            [self.seeds.transpose(1, 0, 2).reshape(count, 2 * n), self.values.transpose(1, 0, 2).reshape(count, m * n),
             packed, self.final],
            axis=1,
        )

    @classmethod
    def from_words(cls, words: np.ndarray, bits: int, payload_words: int = 1) -> Corrections:
        """Inverse of :meth:`to_words`; raises ValueError on a wrong width."""
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"DCF input width must lie in 1..{MAX_BITS}, got {bits}")
        words = np.asarray(words, dtype=np.uint64)
        expected = correction_words(bits, payload_words)
        if words.ndim != 2 or words.shape[1] != expected:
            raise ValueError(f"expected (count, {expected}) correction words, got {words.shape}")
        count, n, m = words.shape[0], bits, payload_words
        seeds = np.ascontiguousarray(words[:, : 2 * n].reshape(count, n, 2).transpose(1, 0, 2))
        values = np.ascontiguousarray(words[:, 2 * n : (2 + m) * n].reshape(count, n, m).transpose(1, 0, 2))
        packed = words[:, (2 + m) * n : -m]
        unpacked = (packed[:, :, None] >> np.arange(64, dtype=np.uint64)) & _ONE
        controls = np.ascontiguousarray(unpacked.reshape(count, -1)[:, : 2 * n].reshape(count, n, 2).transpose(1, 0, 2))
        return cls(bits, seeds, values, controls, np.ascontiguousarray(words[:, -m:]))


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
    if beta.shape != (count, m) or m < 1 or root0.shape != (count, 2) or root1.shape != (count, 2):
        raise ValueError("alpha, beta and the roots must describe the same number of keys")
    s0, s1 = root0.astype(np.uint64), root1.astype(np.uint64)
    t0, t1 = np.zeros(count, dtype=np.uint64), np.ones(count, dtype=np.uint64)
    v_alpha = np.zeros((count, m), dtype=np.uint64)
    seeds = np.empty((bits, count, 2), dtype=np.uint64)
    values = np.empty((bits, count, m), dtype=np.uint64)
    controls = np.empty((bits, count, 2), dtype=np.uint64)
    for level in range(bits):
        a = _bit(alpha, bits - 1 - level)  # 1: keep the right child, the left one is "lost"
        e0, e1 = prg.expand(s0, m), prg.expand(s1, m)
        lose0 = _pick(a, e0.seed_right, e0.seed_left)
        lose1 = _pick(a, e1.seed_right, e1.seed_left)
        seed_cw = lose0 ^ lose1
        sign = _signed(t1)[:, None]
        value_cw = sign * (_pick(a, e1.value_right, e1.value_left) - _pick(a, e0.value_right, e0.value_left) - v_alpha)
        value_cw += a[:, None] * sign * beta  # the lost child is the left one: every x below alpha there gets beta
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
    final = _signed(t1)[:, None] * (_final_values(s1, m) - _final_values(s0, m) - v_alpha)
    return Corrections(bits, seeds, values, controls, final)


def _final_values(seeds: np.ndarray, m: int) -> np.ndarray:
    """The leaf's m value words: the seed's high half for one word, an expansion's values for more."""
    if m == 1:
        return seeds[:, 1:2]
    return prg.expand(seeds, m).value_left


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
    sign = np.uint64(1) if party == 0 else np.uint64(0xFFFFFFFFFFFFFFFF)
    s = root.astype(np.uint64)
    t = np.full(corrections.count, party, dtype=np.uint64)
    total = np.zeros((corrections.count, m), dtype=np.uint64)
    for level in range(bits):
        e = prg.expand(s, m)
        seed_cw = corrections.seeds[level] * t[:, None]
        right = _bit(x, bits - 1 - level)
        value = _pick(right, e.value_left, e.value_right)
        total += sign * (value + t[:, None] * corrections.values[level])
        s = _pick(right, e.seed_left, e.seed_right) ^ seed_cw
        control = _pick(right, corrections.controls[level, :, 0], corrections.controls[level, :, 1])
        t = _pick(right, e.bit_left, e.bit_right) ^ (t & control)
    total += sign * (_final_values(s, m) + t[:, None] * corrections.final)
    return total[:, 0] if m == 1 else total
