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


@pytest.mark.parametrize("logn", [8, 10, 12, 13, 14, 15, 16])
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
