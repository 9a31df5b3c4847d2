"""Constants of the 3-step layout-invariant negacyclic NTT (CROSS's MAT), per prime.

A length-N polynomial is viewed row-major as an R x C matrix X (n = C r + c).  With psi a primitive
2N-th root and w = psi^2,

    NTT:  Y = T1 @ X,  Y *= T2 (elementwise),  Z = Y @ T3
    T1[i, r] = w^(C r br_R(i)) psi^(C r)    T2[i, c] = w^(c br_R(i)) psi^c    T3[c, j] = w^(R c br_C(j))

gives Z[i, j] = sum_n x[n] psi^(n (2k + 1)) at k = br_R(i) + R br_C(j): the negacyclic evaluation in
bit-reversed order (SEAL's and OpenFHE's layout), read row-major, with no transpose and no
permutation at run time -- the twist and bit reversal live in the constants.  The inverse mirrors it
(right matmul, twiddle, left matmul) with 1/C folded into U3 and 1/R into U1.  Costs: two GEMMs of
contraction R and C plus one elementwise product, i.e. 16 N (R + C) int8 MACs after BAT.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .primes import negacyclic_root


def split_dims(n: int) -> tuple[int, int]:
    """(R, C) with R * C = n, both powers of two, R <= C and as square as possible."""
    if n < 4 or n & (n - 1):
        raise ValueError(f"N must be a power of two >= 4, got {n}")
    log = n.bit_length() - 1
    r = 1 << (log // 2)
    return r, n // r


def bitrev(i: int, bits: int) -> int:
    """Reverse the low ``bits`` bits of i."""
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


def _powers(base: int, count: int, q: int) -> np.ndarray:
    """[base^0, ..., base^(count-1)] mod q: every table below is a gather from this one."""
    out = np.empty(count, dtype=np.int64)
    acc = 1
    for e in range(count):
        out[e] = acc
        acc = acc * base % q
    return out


@dataclass(frozen=True)
class MatrixNTTConstants:
    """Forward (T1, T2, T3) and inverse (U3, U2, U1) matrices for one (N, q); entries in [0, q)."""

    n: int
    q: int
    r: int
    c: int
    t1: np.ndarray
    t2: np.ndarray
    t3: np.ndarray
    u3: np.ndarray
    u2: np.ndarray
    u1: np.ndarray


@lru_cache(maxsize=64)
def matrix_ntt_constants(n: int, q: int) -> MatrixNTTConstants:
    """Build (and cache) the MAT constants; O(N + R^2 + C^2) modular exponentiations."""
    r, c = split_dims(n)
    psi = negacyclic_root(n, q)
    psi_inv = pow(psi, -1, q)
    br_r = np.array([bitrev(i, r.bit_length() - 1) for i in range(r)], dtype=np.int64)
    br_c = np.array([bitrev(j, c.bit_length() - 1) for j in range(c)], dtype=np.int64)
    rr, cc = np.arange(r, dtype=np.int64), np.arange(c, dtype=np.int64)
    order = 2 * n  # exponents of psi live mod 2N

    # All tables are powers of psi (or psi^-1): w^e = psi^(2e), exponents taken mod 2N.
    fwd, inv = _powers(psi, order, q), _powers(psi_inv, order, q)
    t1 = fwd[(2 * c * np.outer(br_r, rr) + c * rr[None, :]) % order]
    t2 = fwd[(2 * np.outer(br_r, cc) + cc[None, :]) % order]
    t3 = fwd[(2 * r * np.outer(cc, br_c)) % order]
    u3 = inv[(2 * r * np.outer(br_c, cc)) % order] * pow(c, -1, q) % q
    u2 = inv[(2 * np.outer(br_r, cc) + cc[None, :]) % order]
    u1 = inv[(2 * c * np.outer(rr, br_r) + c * rr[:, None]) % order] * pow(r, -1, q) % q
    return MatrixNTTConstants(n, q, r, c, t1, t2, t3, u3, u2, u1)
