"""Public ntt / intt / polymul: exact negacyclic products for one prime and for RNS bases."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pinfer.accel as accel
from pinfer.accel.primes import ntt_primes

from .conftest import primes_for
from .reference import negacyclic_mul

BACKENDS = ["matrix", "butterfly"]
try:
    import jax  # noqa: F401

    BACKENDS.append("jax")
except ImportError:
    pass


@pytest.mark.parametrize("backend", BACKENDS)
@given(logn=st.integers(4, 11), seed=st.integers(0, 2**32 - 1), which=st.integers(0, 3))
@settings(max_examples=6, deadline=None)
def test_polymul_single_prime(backend, logn, seed, which):
    n = 1 << logn
    q = primes_for(n)[which]
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-(2**62), 2**62, (2, n), generator=g)  # any int64: reduced mod q first
    b = torch.randint(0, q, (2, n), generator=g)
    out = accel.polymul(a, b, q, backend=backend)
    for i in range(2):
        assert out[i].tolist() == negacyclic_mul(a[i].tolist(), b[i].tolist(), q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_polymul_rns_basis(backend):
    n = 1024
    primes = primes_for(n) + ntt_primes(31, n, 3)[1:]
    a = torch.stack([torch.randint(0, q, (3, n)) for q in primes], dim=-2)  # (3, L, N)
    b = torch.stack([torch.randint(0, q, (3, n)) for q in primes], dim=-2)
    out = accel.polymul(a, b, primes, backend=backend)
    assert out.shape == (3, len(primes), n)
    for i in range(3):
        for li, q in enumerate(primes):
            assert out[i, li].tolist() == negacyclic_mul(a[i, li].tolist(), b[i, li].tolist(), q)


@pytest.mark.slow
def test_polymul_2_16_largest_prime():
    n = 1 << 16
    q = ntt_primes(31, n, 1)[0]
    rng = random.Random(7)
    a = [rng.randrange(q) for _ in range(n)]
    b = [rng.randrange(q) for _ in range(n)]
    out = accel.polymul(torch.tensor(a), torch.tensor(b), q)
    assert out.tolist() == negacyclic_mul(a, b, q)


def test_ntt_roundtrip_and_default_backend():
    n, q = 512, primes_for(512)[2]
    a = torch.randint(0, q, (5, n))
    assert torch.equal(accel.intt(accel.ntt(a, q), q), a)
    assert accel.DEFAULT_BACKEND["cpu"] in accel.BACKENDS


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        accel.ntt(torch.zeros(1024, dtype=torch.int64), 12289 * 0 + 7681)  # 7681 != 1 mod 2048
    with pytest.raises(ValueError):
        accel.ntt(torch.zeros(2, 64, dtype=torch.int64), primes_for(64))  # limb axis mismatch
    with pytest.raises(TypeError):
        accel.ntt(torch.zeros(64, dtype=torch.int32), primes_for(64)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_polymul_broadcasts_b(backend):
    n = 256
    primes = primes_for(n)[:2]
    a = torch.stack([torch.randint(0, q, (3, 2, n)) for q in primes], dim=-2)  # (3, 2, L, N)
    b = torch.stack([torch.randint(0, q, (3, 1, n)) for q in primes], dim=-2)  # (3, 1, L, N)
    out = accel.polymul(a, b, primes, backend=backend)
    assert torch.equal(out, accel.polymul(a, b.expand(a.shape).contiguous(), primes, backend=backend))
    assert out[2, 1, 0].tolist() == negacyclic_mul(a[2, 1, 0].tolist(), b[2, 0, 0].tolist(), primes[0])
    with pytest.raises(ValueError):
        accel.polymul(b, a, primes, backend=backend)
