"""Basis-Aligned Transformation (BAT): a modular matrix product as one int8 GEMM.

For a constant T and data x = sum_q' x_q' 2^(8q') (byte digits), x*T = sum_p 2^(8p) sum_q' x_q' B[q'][p]
(mod q) with B[q'][p] = byte_p((T * 2^(8q')) mod q) (CROSS, arXiv 2501.07047, section "BAT").  Every
constant entry thus becomes a dense 4x4 block, a K-long modular dot product becomes a 4K-long int8
dot product (16 int8 MACs per modular MAC) with int32 accumulation, and the four partial sums are
recombined by shift-add and one Barrett reduction.

Deviation from CROSS: GPU int8 tensor cores (``torch._int_mm``, ``mma.s8``) are signed, so both sides
use *balanced* base-256 digits in [-128, 127] of the *centered* residue (|v| <= q/2 < 2^30).  The
block is still 4x4, the product count is unchanged, and the signed sum is bounded by
:func:`accumulation_bound`; adding :func:`reduction_offset` (a multiple of q) makes it non-negative
for Barrett.
"""

from __future__ import annotations

import numpy as np

from .barrett import Barrett

DIGITS = 4
DIGIT_BIAS = 0x80808080  # adds 128 to every byte, so plain bytes minus 128 are balanced digits
_BYTE_WEIGHTS = sum(1 << (8 * p) for p in range(DIGITS))


def centered(x, q):
    """Map residues in [0, q) to (-q/2, q/2] (works on ints, numpy, torch and JAX)."""
    return x - q * (x > q // 2)


def balanced_digits(v: np.ndarray) -> np.ndarray:
    """Balanced base-256 digits of |v| < 2^30, shape v.shape + (4,), int8, little-endian."""
    y = v.astype(np.int64) + DIGIT_BIAS
    return np.stack([((y >> (8 * p)) & 255) - 128 for p in range(DIGITS)], axis=-1).astype(np.int8)


def expand_constant(t: np.ndarray, q: int) -> np.ndarray:
    """BAT blocks of a constant matrix: out[a, b, q', p] = digit_p(centered(t[a, b] * 2^(8q') mod q))."""
    t = np.asarray(t, dtype=np.int64) % q
    shifted = np.stack([(t * (1 << (8 * s))) % q for s in range(DIGITS)], axis=-1)  # < 2^55
    return balanced_digits(centered(shifted, q))


def left_operand(t: np.ndarray, q: int) -> np.ndarray:
    """int8 matrix for Y = T @ X: rows (i, p) over output bytes, columns (r, q') over input bytes."""
    b = expand_constant(t, q)  # (i, r, q', p)
    rows, cols = t.shape
    return np.ascontiguousarray(b.transpose(0, 3, 1, 2)).reshape(rows * DIGITS, cols * DIGITS)


def right_operand(t: np.ndarray, q: int) -> np.ndarray:
    """int8 matrix for Y = X @ T: rows (c, q') over input bytes, columns (j, p) over output bytes."""
    b = expand_constant(t, q)  # (c, j, q', p)
    rows, cols = t.shape
    return np.ascontiguousarray(b.transpose(0, 2, 1, 3)).reshape(rows * DIGITS, cols * DIGITS)


def accumulation_bound(k: int) -> int:
    """Largest |sum_p acc_p 2^(8p)| for contraction length k: 4k products of two digits <= 128."""
    return DIGITS * k * 128 * 128 * _BYTE_WEIGHTS


def int32_safe(k: int) -> bool:
    """Whether one int32 accumulator per output byte cannot overflow (k up to 32767)."""
    return DIGITS * k * 128 * 128 < (1 << 31)


def reduction_offset(k: int, q: int) -> int:
    """A multiple of q that lifts the signed recombined sum into Barrett's input range [0, 2^(31+k))."""
    bound = accumulation_bound(k)
    off = -(-bound // q) * q
    if off + bound >= Barrett.for_modulus(q).input_bound or not int32_safe(k):
        raise ValueError(f"contraction length {k} too long for a BAT product mod {q}")
    return off
