"""Homomorphic-encryption primitives on matrix engines (CROSS-style BAT + MAT NTT), and an RLWE scheme.

Entry points: :func:`ntt`, :func:`intt`, :func:`polymul` (torch int64 tensors, one prime or an RNS
basis); the BFV-style scheme in :mod:`pinfer.accel.rlwe` with parameter sets in
:mod:`pinfer.accel.params`; Cheetah matrix-vector encoding in :mod:`pinfer.accel.cheetah`.
"""

from .polymul import BACKENDS, DEFAULT_BACKEND, intt, ntt, polymul

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "intt", "ntt", "polymul"]
