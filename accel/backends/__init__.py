"""Executors of the NTT on concrete array libraries: torch (CPU, CUDA) and JAX (CPU, GPU, TPU).

Each backend implements the same contract on an RNS batch of shape (..., L, N), limb l reduced
modulo primes[l]: forward NTT into bit-reversed evaluation order, its inverse, and the pointwise
product.  The matrix backends share their constants with :mod:`pinfer.accel.ntt_matrix` and
:mod:`pinfer.accel.bat`; the butterfly backend is :mod:`pinfer.accel.ntt_butterfly`.
"""
