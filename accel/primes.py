"""NTT-friendly primes and roots of unity for negacyclic transforms of length N = 2^4..2^16.

A negacyclic NTT of length N mod q needs a primitive 2N-th root of unity psi, which exists iff
``q = 1 (mod 2N)``.  Primes are searched downward from ``2^bits`` so a chain of them packs as many
modulus bits as possible under the word limit (31 bits here, see :mod:`pinfer.accel.barrett`).
Everything is deterministic, so constants and parameter sets are reproducible without storing them.
"""

from __future__ import annotations

from functools import lru_cache

_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin, exact for every n < 3.3e24 (far beyond word size)."""
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def ntt_primes(bits: int, n: int, count: int, exclude: tuple[int, ...] = ()) -> list[int]:
    """The ``count`` largest primes below ``2^bits`` with ``q = 1 (mod 2n)``, descending.

    ``exclude`` skips primes already used elsewhere (e.g. a chain of mixed sizes needs distinct
    primes for the CRT).
    """
    if n & (n - 1) or n < 2:
        raise ValueError("n must be a power of two")
    step = 2 * n
    q = ((1 << bits) - 1) // step * step + 1
    out: list[int] = []
    while len(out) < count:
        if q < step:
            raise ValueError(f"not enough {bits}-bit primes = 1 mod {step}")
        if q < (1 << bits) and q not in exclude and is_prime(q):
            out.append(q)
        q -= step
    return out


def _prime_factors_of_q_minus_1(q: int) -> list[int]:
    """Distinct prime factors of q - 1 (trial division; q < 2^31 keeps this instant)."""
    n, fs, p = q - 1, [], 2
    while p * p <= n:
        if n % p == 0:
            fs.append(p)
            while n % p == 0:
                n //= p
        p += 1
    if n > 1:
        fs.append(n)
    return fs


@lru_cache(maxsize=None)
def primitive_root(q: int) -> int:
    """Smallest generator of the multiplicative group mod prime q."""
    fs = _prime_factors_of_q_minus_1(q)
    g = 2
    while any(pow(g, (q - 1) // f, q) == 1 for f in fs):
        g += 1
    return g


@lru_cache(maxsize=None)
def root_of_unity(order: int, q: int) -> int:
    """The primitive ``order``-th root of unity g^((q-1)/order) for the smallest generator g."""
    if (q - 1) % order:
        raise ValueError(f"{order} does not divide q - 1 = {q - 1}")
    return pow(primitive_root(q), (q - 1) // order, q)


def negacyclic_root(n: int, q: int) -> int:
    """psi, a primitive 2n-th root mod q: psi^n = -1, so X^n + 1 splits into (X - psi^(2j+1))."""
    psi = root_of_unity(2 * n, q)
    assert pow(psi, n, q) == q - 1
    return psi
