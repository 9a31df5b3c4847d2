"""Public NTT / INTT / negacyclic polynomial product over one prime or an RNS basis of primes.

Backends (``backend=``):

* ``"matrix"`` -- the 3-step BAT NTT on torch int8 GEMMs (:mod:`.backends.torch_matrix`), CPU or CUDA;
* ``"butterfly"`` -- radix-2 NTT on torch int64 vector ops (:mod:`.ntt_butterfly`), CPU or CUDA;
* ``"jax"`` -- the 3-step BAT NTT in JAX/XLA (:mod:`.backends.jax_matrix`), CPU, GPU or TPU.

``None`` picks :data:`DEFAULT_BACKEND` for the tensor's device: the matrix path, which was the faster
one both on this project's CPU runners and on H100 (numbers in docs/accel.md; ``pinfer bench accel``
re-measures them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import ntt_butterfly
from .backends import torch_matrix

DEFAULT_BACKEND = {"cpu": "matrix", "cuda": "matrix"}
BACKENDS = ("matrix", "butterfly", "jax")

Modulus = int | Sequence[int]


def _primes(modulus: Modulus) -> tuple[tuple[int, ...], bool]:
    if isinstance(modulus, int):
        return (int(modulus),), True
    return tuple(int(q) for q in modulus), False


def _engine(n: int, primes: tuple[int, ...], device: torch.device, backend: str | None):
    for q in primes:
        if (q - 1) % (2 * n):
            raise ValueError(f"{q} is not an NTT prime for N={n}: need q = 1 mod {2 * n}")
    name = backend or DEFAULT_BACKEND.get(device.type, "matrix")
    if name == "matrix":
        return torch_matrix.plan(n, primes, str(device))
    if name == "butterfly":
        return ntt_butterfly.plan(n, primes, str(device))
    if name == "jax":
        from .backends import jax_matrix  # JAX is optional: imported only when asked for

        return jax_matrix.plan(n, primes)
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")


def _prepare(a: torch.Tensor, primes: tuple[int, ...], single: bool) -> torch.Tensor:
    if a.dtype != torch.int64:
        raise TypeError("expected an int64 tensor")
    x = a.unsqueeze(-2) if single else a
    if x.shape[-2] != len(primes):
        raise ValueError(f"limb axis (-2) has {x.shape[-2]} entries for {len(primes)} primes")
    q = torch.tensor(primes, dtype=torch.int64, device=a.device).unsqueeze(-1)
    return torch.remainder(x, q)


def _apply(method: str, tensors: Sequence[torch.Tensor], modulus: Modulus, backend: str | None) -> torch.Tensor:
    primes, single = _primes(modulus)
    xs = [_prepare(t, primes, single) for t in tensors]
    engine = _engine(xs[0].shape[-1], primes, xs[0].device, backend)
    out = getattr(engine, method)(*xs)
    return out.squeeze(-2) if single else out


def ntt(a: torch.Tensor, modulus: Modulus, *, backend: str | None = None) -> torch.Tensor:
    """Negacyclic NTT into bit-reversed evaluation order: out[p] = a(psi^(2 br(p) + 1)) mod q.

    ``a`` is int64 of shape (..., N) for one prime ``modulus``, or (..., L, N) with limb l taken mod
    ``modulus[l]`` for an RNS basis.  Inputs may be any int64 (they are reduced); N is a power of two
    and every prime is below 2^31 with q = 1 (mod 2N).  The output order matches SEAL/OpenFHE.
    """
    return _apply("forward", [a], modulus, backend)


def intt(a: torch.Tensor, modulus: Modulus, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of :func:`ntt`: coefficients in [0, q) from bit-reversed evaluations."""
    return _apply("inverse", [a], modulus, backend)


def polymul(a: torch.Tensor, b: torch.Tensor, modulus: Modulus, *, backend: str | None = None) -> torch.Tensor:
    """Negacyclic product a * b mod (X^N + 1, q) per limb, shapes as in :func:`ntt` (equal shapes).

    Computed as INTT(NTT(a) * NTT(b)); the result lies in [0, q).
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return _apply("polymul", [a, b], modulus, backend)
