import pytest

from pinfer.accel.primes import is_prime, negacyclic_root, ntt_primes, primitive_root

SMALL_PRIMES = [p for p in range(2, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]


def test_is_prime_matches_trial_division():
    assert [n for n in range(2000) if is_prime(n)] == SMALL_PRIMES
    assert is_prime(2**31 - 1) and not is_prime(2**31 + 1) and not is_prime(3215031751)  # strong pseudoprime


@pytest.mark.parametrize("logn", range(10, 17))
@pytest.mark.parametrize("bits", [28, 29, 30, 31])
def test_ntt_primes_and_roots(logn, bits):
    n = 1 << logn
    qs = ntt_primes(bits, n, 3)
    assert qs == sorted(qs, reverse=True) and len(set(qs)) == 3
    for q in qs:
        assert is_prime(q) and q % (2 * n) == 1 and q.bit_length() == bits
        psi = negacyclic_root(n, q)
        assert pow(psi, n, q) == q - 1 and pow(psi, 2 * n, q) == 1
        g = primitive_root(q)
        assert pow(g, (q - 1) // 2, q) == q - 1


def test_ntt_primes_are_the_largest():
    n = 1 << 12
    q = ntt_primes(31, n, 1)[0]
    assert all(not is_prime(c) for c in range(q + 2 * n, 1 << 31, 2 * n))
