"""Every NTT backend equals the Python-integer negacyclic NTT, and INTT inverts it, N = 2^4..2^16."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.accel import ntt_butterfly
from pinfer.accel.backends import torch_matrix

from .conftest import primes_for
from .reference import ntt_definition, ntt_recursive

FAST_LOGN = list(range(4, 13))
SLOW_LOGN = [13, 14, 15, 16]


def _engines(n, primes):
    engines = [torch_matrix.plan(n, tuple(primes), "cpu"), ntt_butterfly.plan(n, tuple(primes), "cpu")]
    try:
        from pinfer.accel.backends import jax_matrix
    except ImportError:
        return engines
    if n <= 1 << 12:  # JAX compiles per shape; the larger sizes are covered by the torch paths
        engines.append(jax_matrix.plan(n, tuple(primes)))
    return engines


def _check(logn, seed, batch=2):
    n = 1 << logn
    primes = primes_for(n)
    rng = random.Random(seed)
    a = torch.tensor([[[rng.randrange(q) for _ in range(n)] for q in primes] for _ in range(batch)])
    a[0, :, 0] = torch.tensor(primes) - 1  # extreme residue
    ref = [ntt_recursive(a[-1, li].tolist(), q) for li, q in enumerate(primes)]
    for eng in _engines(n, primes):
        f = eng.forward(a)
        assert [f[-1, li].tolist() for li in range(len(primes))] == ref, type(eng).__name__
        assert torch.equal(eng.inverse(f), a), type(eng).__name__


def test_recursive_reference_matches_definition():
    for logn in (2, 4, 6):
        n = 1 << logn
        for q in primes_for(n)[:2]:
            a = [random.randrange(q) for _ in range(n)]
            assert ntt_recursive(a, q) == ntt_definition(a, q)


@pytest.mark.parametrize("logn", FAST_LOGN)
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=2, deadline=None)
def test_ntt_backends_exact(logn, seed):
    _check(logn, seed)


@pytest.mark.slow
@pytest.mark.parametrize("logn", SLOW_LOGN)
def test_ntt_backends_exact_large(logn):
    _check(logn, seed=logn, batch=1)


def test_layouts_agree_between_paths():
    n = 256
    primes = tuple(primes_for(n))
    a = torch.randint(0, min(primes), (3, 4, len(primes), n))
    m = torch_matrix.plan(n, primes, "cpu")
    b = ntt_butterfly.plan(n, primes, "cpu")
    assert torch.equal(m.forward(a), b.forward(a))
