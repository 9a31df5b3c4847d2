"""BFV parameter sets at >= 128-bit classical security, sized by the worst-case noise of one use.

Security: the ciphertext modulus Q stays within the largest log2 Q that the Homomorphic Encryption
Security Standard (Albrecht et al., HomomorphicEncryption.org, Nov 2018, section 5.4, 128-bit
classical table, uniform ternary secret, error sigma ~ 3.2) allows for each ring dimension N:
27, 54, 109, 218, 438, 881 bits for N = 2^10 .. 2^15 (the same limits SEAL enforces as
SEAL_HE_STD_PARMS_128_TC).  Errors here are centered binomial with eta = 21 (sigma = 3.24, a hard
bound |e| <= 21).  N = 2^16 is beyond the Standard's tables, so no 2^16 set is offered.

Plaintext modulus: t = 2^k.  Each set carries the largest k <= 64 for which the *target use* --
one fresh public-key ciphertext times a worst-case plaintext (|p| <= t/2), plus one more fresh
ciphertext (the Cheetah matrix-vector product with a mask) -- provably decrypts; see
:func:`pinfer.accel.rlwe.ptxt_mul_noise_bound` for the bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

from .primes import ntt_primes
from .sampling import CBD_ETA

HE_STANDARD_128_MAX_LOG_Q = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_PLAIN_BITS = 64


@dataclass(frozen=True)
class BFVParams:
    """Ring dimension N, RNS primes of Q, and plaintext modulus t = 2^plain_bits."""

    name: str
    n: int
    primes: tuple[int, ...]
    plain_bits: int

    def __post_init__(self) -> None:
        if not 1 <= self.plain_bits <= MAX_PLAIN_BITS:
            raise ValueError("plain_bits must be in 1..64")
        if self.n in HE_STANDARD_128_MAX_LOG_Q and self.log_q > HE_STANDARD_128_MAX_LOG_Q[self.n]:
            raise ValueError(f"{self.name}: log2 Q = {self.log_q} exceeds the 128-bit limit for N={self.n}")

    @cached_property
    def q(self) -> int:
        return prod(self.primes)

    @property
    def log_q(self) -> float:
        """Bits of Q (exclusive bound: Q < 2^log_q)."""
        return self.q.bit_length()

    @property
    def t(self) -> int:
        return 1 << self.plain_bits

    @property
    def delta(self) -> int:
        """Delta = floor(Q / t), the scale of an encoded message."""
        return self.q // self.t

    @property
    def r_t(self) -> int:
        """Q mod t: the rounding residue that shows up as noise whenever messages wrap mod t."""
        return self.q % self.t

    @property
    def noise_threshold(self) -> int:
        """Largest ||v||_inf that decryption tolerates: need |t v - r_t m| < Q/2 with |m| <= t/2."""
        return (self.q - self.r_t * self.t - 1) // (2 * self.t)

    @property
    def secure_128(self) -> bool:
        """Whether N is in the Standard's table and Q within its 128-bit limit."""
        return self.n in HE_STANDARD_128_MAX_LOG_Q and self.log_q <= HE_STANDARD_128_MAX_LOG_Q[self.n]

    def with_plain_bits(self, bits: int) -> "BFVParams":
        """Same ring and Q with another plaintext modulus 2^bits."""
        return BFVParams(self.name, self.n, self.primes, bits)


def fresh_pk_noise_bound(n: int, eta: int = CBD_ETA) -> int:
    """||e u + e0 + e1 s||_inf for ternary u, s and |e|, |e0|, |e1| <= eta: eta (2N + 1)."""
    return eta * (2 * n + 1)


def ptxt_mul_noise_bound(n: int, t: int, r_t: int, noise: int, plain_inf: int) -> int:
    """Noise after multiplying by a plaintext with ||p||_inf = plain_inf (centered).

    (Delta m + v) p = Delta [m p]_t + (v p - r_t w) with m p = [m p]_t + t w and
    ||w|| <= (N (t/2) plain_inf + t/2) / t, so the new noise is at most N plain_inf noise + r_t ||w||.
    """
    w = -(-(n * (t // 2) * plain_inf + t // 2) // t)
    return n * plain_inf * noise + r_t * w


def _max_plain_bits(n: int, primes: tuple[int, ...]) -> int:
    for bits in range(MAX_PLAIN_BITS, 0, -1):
        p = BFVParams("probe", n, primes, bits)
        fresh = fresh_pk_noise_bound(n)
        after = ptxt_mul_noise_bound(n, p.t, p.r_t, fresh, p.t // 2) + fresh + p.r_t
        if after <= p.noise_threshold:
            return bits
    raise ValueError("no plaintext modulus fits")


def make_params(name: str, n: int, limbs: int, prime_bits: int = 31) -> BFVParams:
    """A set with ``limbs`` primes of ``prime_bits`` bits and the largest safe plaintext modulus."""
    primes = tuple(ntt_primes(prime_bits, n, limbs))
    return BFVParams(name, n, primes, _max_plain_bits(n, primes))


# log2 Q: 93, 217, 434, 868 bits -- each within the Standard's 109, 218, 438, 881.
PARAMETER_SETS: dict[str, BFVParams] = {
    p.name: p
    for p in (
        make_params("bfv-4096", 4096, 3),
        make_params("bfv-8192", 8192, 7),
        make_params("bfv-16384", 16384, 14),
        make_params("bfv-32768", 32768, 28),
    )
}
