"""Cheetah encoding: plaintext polynomial identity and encrypted matrix-vector products."""

import random

import pytest
import torch

from pinfer.accel import cheetah
from pinfer.accel.params import PARAMETER_SETS
from pinfer.accel.rlwe import BFV

from .reference import negacyclic_mul


@pytest.mark.parametrize("n_out,n_in,n", [(4, 4, 16), (3, 5, 16), (7, 2, 16), (5, 20, 16), (16, 1, 16)])
def test_encoding_identity_in_the_clear(n_out, n_in, n):
    t = 1 << 20
    rng = random.Random(n_out * 100 + n_in)
    w = torch.tensor([[rng.randrange(t) for _ in range(n_in)] for _ in range(n_out)])
    v = torch.tensor([rng.randrange(t) for _ in range(n_in)])
    lay = cheetah.MatVecLayout(n_out, n_in, n)
    pv, pw = cheetah.encode_vector(v, lay), cheetah.encode_matrix(w, lay)
    sums = []
    for i in range(lay.tiles_out):
        acc = [0] * n
        for j in range(lay.tiles_in):
            prod = negacyclic_mul(pw[i, j].tolist(), pv[j].tolist(), t)
            acc = [(x + y) % t for x, y in zip(acc, prod)]
        sums.append(acc)
    got = cheetah.decode_result(torch.tensor(sums), lay)
    want = [sum(int(w[i, j]) * int(v[j]) for j in range(n_in)) % t for i in range(n_out)]
    assert got.tolist() == want


@pytest.mark.parametrize("n_out,n_in", [(70, 100), (3, 5000)])
def test_encrypted_matvec_exact(n_out, n_in):
    params = PARAMETER_SETS["bfv-4096"]
    scheme = BFV(params)
    sk, pk = scheme.keygen()
    g = torch.Generator().manual_seed(n_in)
    w = torch.randint(0, params.t, (n_out, n_in), generator=g)
    v = torch.randint(0, params.t, (n_in,), generator=g)
    lay = cheetah.MatVecLayout(n_out, n_in, params.n)
    ct = scheme.encrypt(cheetah.encode_vector(v, lay), pk)
    res = cheetah.matvec(scheme, ct, w, lay)
    assert res.noise_bound <= params.noise_threshold
    got = cheetah.decode_result(scheme.decrypt(res, sk), lay)
    want = [sum(int(w[i, j]) * int(v[j]) for j in range(n_in)) % params.t for i in range(n_out)]
    assert got.tolist() == want
