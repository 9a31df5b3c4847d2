"""Barrett reduction for word-size NTT primes, exact in signed 64-bit arithmetic.

CROSS reduces with Barrett because it needs only multiply, add, shift and select, which every matrix
engine's vector unit has.  Its constants assume unsigned 64-bit words; torch and JAX on GPUs are
signed-int64 first, so the product ``z * m`` is split at bit 31 to keep every intermediate below
2^63.  The same code runs on Python ints, torch tensors and JAX arrays because it uses only the
operators ``>> & * - >=`` (a comparison times an integer is the select).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MAX_MODULUS_BITS = 31
_LOW31 = (1 << 31) - 1


@dataclass(frozen=True)
class Barrett:
    """Constants for reducing ``z`` in ``[0, 2^(31 + k))`` modulo ``q`` with ``k = bitlen(q)``.

    ``m = floor(2^(31 + k) / q)`` is at most 2^32 because ``q >= 2^(k - 1)``, so ``zh * m`` and
    ``zl * m`` (halves of z split at bit 31) stay below 2^63.  The quotient estimate
    ``t = floor(z * m / 2^(31 + k))`` then lies in ``{floor(z/q) - 1, floor(z/q)}`` (the error term
    ``z / 2^(31+k)`` is below one), so a single conditional subtraction finishes the reduction.
    """

    q: int
    k: int
    m: int

    @classmethod
    def for_modulus(cls, q: int) -> "Barrett":
        """Precompute constants; ``2 <= q < 2^31`` (signed-int64 headroom for the split product)."""
        if not (2 <= q < (1 << MAX_MODULUS_BITS)):
            raise ValueError(f"modulus must be in [2, 2^31), got {q}")
        k = q.bit_length()
        return cls(q=q, k=k, m=(1 << (31 + k)) // q)

    @property
    def input_bound(self) -> int:
        """Exclusive upper bound on inputs that :meth:`reduce` handles exactly."""
        return 1 << (31 + self.k)

    def reduce(self, z: T) -> T:
        """Return ``z mod q`` for ``0 <= z < input_bound`` (ints, torch tensors or JAX arrays)."""
        return barrett_reduce(z, self.q, self.m, self.k)


def barrett_reduce(z: T, q, m, k) -> T:
    """Reduce ``z`` modulo ``q`` with precomputed ``m`` and ``k`` (scalars or broadcastable arrays).

    Passing ``q``, ``m`` and ``k`` as arrays lets one call reduce several RNS limbs at once, each
    against its own prime, which is how the batched NTT uses it.
    """
    zh = z >> 31
    zl = z & _LOW31
    t = (zh * m + ((zl * m) >> 31)) >> k
    r = z - t * q
    return r - q * (r >= q)
