"""Shared fixtures for the accel tests: prime choices per N."""

from __future__ import annotations

import pytest
import torch

from pinfer.accel.primes import ntt_primes


def primes_for(n: int) -> list[int]:
    """Primes of 28..31 bits for ring dimension n, the first being the largest supported (31-bit)."""
    return [ntt_primes(31, n, 1)[0], ntt_primes(30, n, 1)[0], ntt_primes(29, n, 1)[0], ntt_primes(28, n, 1)[0]]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
