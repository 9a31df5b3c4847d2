"""CUDA paths (int8 tensor cores through torch._int_mm, Inductor-fused glue) equal the CPU/Python results."""

import random

import pytest
import torch

import pinfer.accel as accel
from pinfer.accel import ntt_butterfly
from pinfer.accel.backends import torch_matrix

from .conftest import cuda, primes_for
from .reference import negacyclic_mul, ntt_recursive

pytestmark = [pytest.mark.gpu, cuda]


@pytest.mark.parametrize("logn,compiled", [(4, False), (6, False), (10, False), (12, False), (12, True),
                                            (14, False), (16, False), (16, True)])
def test_cuda_matrix_ntt_exact(logn, compiled):
    n = 1 << logn
    primes = tuple(primes_for(n))
    a = torch.stack([torch.randint(0, q, (8, n)) for q in primes], dim=-2)
    eng = torch_matrix.TorchMatrixNTT(n, primes, "cuda", compile=compiled)
    f = eng.forward(a.cuda())
    assert torch.equal(f.cpu(), torch_matrix.plan(n, primes, "cpu").forward(a))
    for li, q in enumerate(primes):
        assert f[3, li].cpu().tolist() == ntt_recursive(a[3, li].tolist(), q)
    assert torch.equal(eng.inverse(f).cpu(), a)


@pytest.mark.parametrize("logn", [5, 12, 16])
def test_cuda_butterfly_and_polymul(logn):
    n = 1 << logn
    primes = tuple(primes_for(n))
    a = torch.stack([torch.randint(0, q, (2, n)) for q in primes], dim=-2)
    b = torch.stack([torch.randint(0, q, (2, n)) for q in primes], dim=-2)
    bf = ntt_butterfly.plan(n, primes, "cuda")
    assert torch.equal(bf.forward(a.cuda()).cpu(), torch_matrix.plan(n, primes, "cpu").forward(a))
    for backend in ("matrix", "butterfly"):
        out = accel.polymul(a.cuda(), b.cuda(), primes, backend=backend).cpu()
        li = random.randrange(len(primes))
        assert out[1, li].tolist() == negacyclic_mul(a[1, li].tolist(), b[1, li].tolist(), primes[li])


def test_triton_rejects_tiny_rings():
    from pinfer.accel.backends import triton_matrix

    with pytest.raises(ValueError):
        triton_matrix.TritonMatrixNTT(256, tuple(primes_for(256)), "cuda")


@pytest.mark.parametrize("logn", [10, 11, 12, 13, 14, 15, 16])
def test_cuda_triton_ntt_exact(logn):
    from pinfer.accel.backends import triton_matrix

    n = 1 << logn
    primes = tuple(primes_for(n))
    a = torch.stack([torch.randint(0, q, (5, n)) for q in primes], dim=-2)
    eng = triton_matrix.TritonMatrixNTT(n, primes, "cuda")
    f = eng.forward(a.cuda())
    assert torch.equal(f.cpu(), torch_matrix.plan(n, primes, "cpu").forward(a))
    assert torch.equal(eng.inverse(f).cpu(), a)
    b = torch.stack([torch.randint(0, q, (5, n)) for q in primes], dim=-2)
    out = accel.polymul(a.cuda(), b.cuda(), primes, backend="matrix-triton").cpu()
    assert out[4, 0].tolist() == negacyclic_mul(a[4, 0].tolist(), b[4, 0].tolist(), primes[0])
    bcast = accel.polymul(a.cuda(), b[:1].cuda(), primes, backend="matrix-triton").cpu()  # b broadcast
    assert bcast[3, 1].tolist() == negacyclic_mul(a[3, 1].tolist(), b[0, 1].tolist(), primes[1])


def test_cuda_bfv_ptxt_mul_exact():
    from pinfer.accel.params import PARAMETER_SETS
    from pinfer.accel.rlwe import BFV

    params = PARAMETER_SETS["bfv-8192"]
    scheme = BFV(params, device="cuda")
    sk, pk = scheme.keygen()
    m = torch.randint(-(2**63), 2**63 - 1, (2, params.n))
    p = torch.randint(-(2**63), 2**63 - 1, (params.n,))
    ct = scheme.multiply_plain(scheme.encrypt(m.cuda(), pk), p.cuda())
    dec = scheme.decrypt(ct, sk)
    t = params.t
    want = negacyclic_mul([int(x) % t for x in m[1].tolist()], [int(x) % t for x in p.tolist()], t)
    assert [int(x) % t for x in dec[1].tolist()] == want
