"""The fused Triton NTT kernels' logic, run on CPU through Triton's interpreter (no GPU needed).

The interpreter must be chosen before the kernels are decorated, so the check runs in a fresh
process with TRITON_INTERPRET=1; it compares against the torch matrix path and the Python product.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

_SCRIPT = r"""
import torch
from pinfer.accel.primes import ntt_primes
from pinfer.accel.backends.triton_matrix import TritonMatrixNTT
from pinfer.accel.backends.torch_matrix import TorchMatrixNTT
from tests.accel.reference import negacyclic_mul
n = 1024
ps = (ntt_primes(31, n, 1)[0], ntt_primes(28, n, 1)[0])
a = torch.stack([torch.randint(0, q, (2, n)) for q in ps], dim=-2)
b = torch.stack([torch.randint(0, q, (1, n)) for q in ps], dim=-2)
eng = TritonMatrixNTT(n, ps, "cpu", tiles=(32, 32, 32, 4, 1))
f = eng.forward(a)
assert torch.equal(f, TorchMatrixNTT(n, ps, "cpu").forward(a))
assert torch.equal(eng.inverse(f), a)
prod = eng.polymul(a, b)
assert prod[1, 1].tolist() == negacyclic_mul(a[1, 1].tolist(), b[0, 1].tolist(), ps[1])
print("ok")
"""


def test_triton_kernels_in_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
