"""BFV: decrypt(encrypt(m)) = m, exact homomorphic results, noise within its tracked bound, and
exact decryption right at each parameter set's noise threshold."""

import numpy as np
import pytest
import torch

from pinfer.accel.params import HE_STANDARD_128_MAX_LOG_Q, PARAMETER_SETS, fresh_pk_noise_bound
from pinfer.accel.rlwe import BFV

from .reference import negacyclic_mul

FAST = ["bfv-4096", "bfv-8192"]
SLOW = ["bfv-16384", "bfv-32768"]


def _plain(params, shape, gen):
    if params.plain_bits == 64:
        return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen)
    return torch.randint(0, params.t, shape, generator=gen)


def _ref_mul(m, p, params):
    t = params.t
    out = negacyclic_mul([int(x) % t for x in m.tolist()], [int(x) % t for x in p.tolist()], t)
    return [x - (1 << 64) if x >= (1 << 63) else x for x in out]


def _as_list(x, params):
    vals = [int(v) % params.t for v in x.tolist()]
    return [v - (1 << 64) if v >= (1 << 63) else v for v in vals]


def _roundtrip(name, seed):
    params = PARAMETER_SETS[name]
    scheme = BFV(params)
    sk, pk = scheme.keygen()
    assert "hidden" in repr(sk) and str(sk.s_ntt[0, 0].item()) not in repr(sk)
    g = torch.Generator().manual_seed(seed)
    m1, m2, p = _plain(params, (2, params.n), g), _plain(params, (2, params.n), g), _plain(params, (params.n,), g)

    c1 = scheme.encrypt(m1, pk)
    c2 = scheme.encrypt_symmetric(m2, sk)
    assert torch.equal(scheme.decrypt(c1, sk), m1)
    assert torch.equal(scheme.decrypt(c2, sk), m2)
    for ct, m in ((c1, m1), (c2, m2)):
        assert scheme.noise(ct, sk, m) <= ct.noise_bound

    s = scheme.add(c1, c2)
    want = m1 + m2 if params.plain_bits == 64 else (m1 + m2) % params.t
    assert torch.equal(scheme.decrypt(s, sk), want)
    assert scheme.noise(s, sk, want) <= s.noise_bound

    prod = scheme.multiply_plain(c1, p)
    dec = scheme.decrypt(prod, sk)
    for i in range(2):
        assert _as_list(dec[i], params) == _ref_mul(m1[i], p, params)
    assert scheme.noise(prod, sk, dec) <= prod.noise_bound <= params.noise_threshold

    masked = scheme.add(prod, scheme.encrypt(m2, pk))  # the parameter sets' target use
    assert masked.noise_bound <= params.noise_threshold
    want = (dec + m2) if params.plain_bits == 64 else (dec + m2) % params.t
    assert torch.equal(scheme.decrypt(masked, sk), want)
    assert torch.equal(scheme.decrypt(scheme.add_plain(c2, m1), sk), (m1 + m2) if params.plain_bits == 64 else (m1 + m2) % params.t)


@pytest.mark.parametrize("name", FAST)
def test_bfv_roundtrip_and_homomorphism(name):
    _roundtrip(name, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_bfv_roundtrip_and_homomorphism_large(name):
    """The two largest sets: public-key round trip and a worst-case plaintext product (kept short:
    each CRT decryption at N = 2^15 with 28 limbs costs seconds on a 2-core runner)."""
    params = PARAMETER_SETS[name]
    scheme = BFV(params)
    sk, pk = scheme.keygen()
    g = torch.Generator().manual_seed(2)
    m = _plain(params, (params.n,), g)
    p = torch.full((params.n,), -(2**63), dtype=torch.int64)  # ||p|| = t/2, the worst case
    ct = scheme.encrypt(m, pk)
    assert torch.equal(scheme.decrypt(ct, sk), m)
    prod = scheme.multiply_plain(ct, p)
    dec = scheme.decrypt(prod, sk)
    assert _as_list(dec, params) == _ref_mul(m, p, params)
    assert scheme.noise(prod, sk, dec) <= prod.noise_bound <= params.noise_threshold


@pytest.mark.parametrize("name", FAST + SLOW)
def test_parameter_sets_secure_and_sized(name):
    params = PARAMETER_SETS[name]
    assert params.secure_128 and params.log_q <= HE_STANDARD_128_MAX_LOG_Q[params.n]
    assert all(q % (2 * params.n) == 1 and q < 2**31 for q in params.primes)
    fresh = fresh_pk_noise_bound(params.n)
    assert fresh < params.noise_threshold


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("plain_bits", [1, 17, "max"])
def test_decryption_exact_at_noise_threshold(name, plain_bits):
    """Inject noise of exactly +-threshold (the largest the set tolerates) on every coefficient."""
    params = PARAMETER_SETS[name]
    params = params if plain_bits == "max" else params.with_plain_bits(plain_bits)
    scheme = BFV(params)
    sk, _ = scheme.keygen()
    g = torch.Generator().manual_seed(3)
    m = _plain(params, (params.n,), g)
    ct = scheme.encrypt_symmetric(m, sk)
    v = scheme.noise(ct, sk, m)
    signs = np.where(np.random.default_rng(0).integers(0, 2, params.n) == 1, 1, -1).astype(object)
    bump = signs * (params.noise_threshold - v)  # |e + bump| <= threshold, reaching it where signs agree
    bump_rns = torch.tensor(np.stack([(bump % q).astype(np.int64) for q in params.primes]))
    data = ct.data.clone()
    data[0] = scheme.basis.add(data[0], bump_rns)
    from pinfer.accel.rlwe import Ciphertext

    noisy = Ciphertext(data, params.noise_threshold)
    assert torch.equal(scheme.decrypt(noisy, sk), m)
    assert params.noise_threshold - v <= scheme.noise(noisy, sk, m) <= params.noise_threshold
    # One plaintext step (Delta) more noise and decryption moves to m + 1: the threshold is real.
    data[0] = scheme.basis.add(data[0], scheme.basis.scalar(params.delta))
    off = scheme.decrypt(Ciphertext(data, 0), sk)
    assert not torch.equal(off, m)
