"""Public NTT / INTT / negacyclic polynomial product over one prime or an RNS basis of primes.

Backends (``backend=``):

* ``"matrix"`` -- the 3-step BAT NTT; on CUDA the fused Triton kernels (:mod:`.backends.triton_matrix`)
  when N >= 1024, otherwise torch int8 GEMMs (:mod:`.backends.torch_matrix`);
* ``"matrix-torch"`` -- the 3-step BAT NTT on ``torch._int_mm`` with Inductor-fused glue on CUDA;
* ``"matrix-triton"`` -- the fused Triton kernels (CUDA only);
* ``"butterfly"`` -- radix-2 NTT on torch int64 vector ops (:mod:`.ntt_butterfly`), CPU or CUDA;
* ``"jax"`` -- the 3-step BAT NTT in JAX/XLA (:mod:`.backends.jax_matrix`), CPU, GPU or TPU.

``None`` picks :data:`DEFAULT_BACKEND` for the tensor's device, the fastest path measured by
``pinfer bench accel`` (docs/accel.md): on CUDA the fused Triton kernels (2.6-5x the compiled
butterfly, 1.5-2.9x ``torch._int_mm``), on CPU the XLA-compiled JAX path when JAX is installed
(10-40x the torch paths, whose int64 glue runs unfused), else the torch matrix path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from . import ntt_butterfly
from .backends import torch_matrix
from .ntt_matrix import split_dims

DEFAULT_BACKEND = {"cpu": "jax" if importlib.util.find_spec("jax") else "matrix", "cuda": "matrix"}
BACKENDS = ("matrix", "matrix-torch", "matrix-triton", "butterfly", "jax")

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
    if name == "matrix" and device.type == "cuda" and split_dims(n)[0] >= 32:
        name = "matrix-triton"
    if name == "matrix-triton":
        from .backends import triton_matrix  # Triton is optional: imported only on CUDA

        return triton_matrix.plan(n, primes, str(device))
    if name in ("matrix", "matrix-torch"):
        return torch_matrix.plan(n, primes, str(device))
    if name == "butterfly":
        return ntt_butterfly.plan(n, primes, str(device))
    if name == "jax":
        from .backends import jax_matrix  # JAX is optional: imported only when asked for

        return jax_matrix.plan(n, primes)
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")


def _prepare(a: torch.Tensor, primes: tuple[int, ...], single: bool, reduced: bool) -> torch.Tensor:
    if a.dtype != torch.int64:
        raise TypeError("expected an int64 tensor")
    x = a.unsqueeze(-2) if single else a
    if x.shape[-2] != len(primes):
        raise ValueError(f"limb axis (-2) has {x.shape[-2]} entries for {len(primes)} primes")
    if reduced:
        return x
    q = torch.tensor(primes, dtype=torch.int64, device=a.device).unsqueeze(-1)
    return torch.remainder(x, q)


def _apply(method: str, tensors: Sequence[torch.Tensor], modulus: Modulus, backend: str | None,
           reduced: bool) -> torch.Tensor:
    primes, single = _primes(modulus)
    xs = [_prepare(t, primes, single, reduced) for t in tensors]
    engine = _engine(xs[0].shape[-1], primes, xs[0].device, backend)
    out = getattr(engine, method)(*xs)
    return out.squeeze(-2) if single else out


def ntt(a: torch.Tensor, modulus: Modulus, *, backend: str | None = None, reduced: bool = False) -> torch.Tensor:
    """Negacyclic NTT into bit-reversed evaluation order: out[p] = a(psi^(2 br(p) + 1)) mod q.

    ``a`` is int64 of shape (..., N) for one prime ``modulus``, or (..., L, N) with limb l taken mod
    ``modulus[l]`` for an RNS basis.  Inputs may be any int64 (they are reduced); N is a power of two
    and every prime is below 2^31 with q = 1 (mod 2N).  The output order matches SEAL/OpenFHE.
    ``reduced=True`` promises entries already in [0, q) and skips the reduction pass (hot loops).
    """
    return _apply("forward", [a], modulus, backend, reduced)


def intt(a: torch.Tensor, modulus: Modulus, *, backend: str | None = None, reduced: bool = False) -> torch.Tensor:
    """Inverse of :func:`ntt`: coefficients in [0, q) from bit-reversed evaluations."""
    return _apply("inverse", [a], modulus, backend, reduced)


def polymul(a: torch.Tensor, b: torch.Tensor, modulus: Modulus, *, backend: str | None = None,
            reduced: bool = False) -> torch.Tensor:
    """Negacyclic product a * b mod (X^N + 1, q) per limb, shapes as in :func:`ntt`.

    ``b`` may broadcast against ``a`` (e.g. one plaintext times both components of many
    ciphertexts); engines that can transform ``b`` once at its own size do so.  Computed as
    INTT(NTT(a) * NTT(b)); the result has a's shape and lies in [0, q).
    """
    if a.shape[-1] != b.shape[-1] or torch.broadcast_shapes(a.shape, b.shape) != a.shape:
        raise ValueError(f"b {tuple(b.shape)} does not broadcast to a {tuple(a.shape)}")
    return _apply("polymul", [a, b], modulus, backend, reduced)
