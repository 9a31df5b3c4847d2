"""BAT: the int8 GEMM with shift-add and one Barrett equals the modular matrix product exactly."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.accel import bat
from pinfer.accel.barrett import Barrett
from pinfer.accel.backends.torch_matrix import _digit_lanes, _recombine, int8_matmul
from pinfer.accel.primes import ntt_primes

PRIMES = [ntt_primes(31, 1 << 16, 1)[0], ntt_primes(30, 1024, 1)[0], ntt_primes(28, 1024, 1)[0], 786433]


def _modmat(a, b, q):
    return [[sum(x * y for x, y in zip(row, col)) % q for col in zip(*b)] for row in a]


def _reduce(z, q, k):
    return Barrett.for_modulus(q).reduce(z + bat.reduction_offset(k, q))


@pytest.mark.parametrize("q", PRIMES)
@given(data=st.data())
@settings(max_examples=15, deadline=None)
def test_bat_right_and_left_products(q, data):
    k = data.draw(st.sampled_from([1, 3, 8, 64, 512]))
    rows, cols = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, q, (rows, k))
    t = rng.integers(0, q, (k, cols))
    x[0, 0], t[0, 0] = q - 1, q // 2 + 1  # extreme residues: largest digits
    xt = torch.from_numpy(x)
    # Right product X @ T: data digits interleaved last, constant as (k*4, cols*4).
    d = _digit_lanes(bat.centered(xt, q)).reshape(rows, 4 * k)
    acc = int8_matmul(d, torch.from_numpy(bat.right_operand(t, q)))
    got = _reduce(_recombine(acc.reshape(rows, cols, 4), dim=2), q, k)
    assert got.tolist() == _modmat(x.tolist(), t.tolist(), q)
    # Left product T^T @ X^T as in the NTT's first step: digit planes on the contraction axis.
    digits_t = _digit_lanes(bat.centered(xt, q)).reshape(rows, 4 * k)  # (n, (r, q')): column-major operand
    acc = int8_matmul(torch.from_numpy(bat.left_operand(t.T.copy(), q)), digits_t.t())
    got = _reduce(_recombine(acc.reshape(cols, 4, rows), dim=1), q, k)
    assert got.tolist() == [list(r) for r in zip(*_modmat(x.tolist(), t.tolist(), q))]


def test_blocks_are_int8_and_bounded():
    q = PRIMES[0]
    b = bat.expand_constant(np.array([[q - 1, 1, q // 2]]), q)
    assert b.dtype == np.int8 and b.shape == (1, 3, 4, 4)
    for s in range(4):
        v = (np.array([q - 1, 1, q // 2]) * (1 << (8 * s))) % q
        recon = (b[0, :, s, :].astype(np.int64) * (256 ** np.arange(4))).sum(-1)
        assert ((recon - v) % q == 0).all()


def test_reduction_offset_rejects_too_long_contractions():
    with pytest.raises(ValueError):
        bat.reduction_offset(40000, PRIMES[0])
