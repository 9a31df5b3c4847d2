"""3-step BAT NTT on JAX: int8 einsums with int32 accumulation, jit-compiled by XLA.

The same program targets CPU, GPU and TPU (the MXU takes int8 operands with int32 results, which is
what CROSS runs on).  Layout is (B, L, R, C); the limb axis is a batch axis of every einsum, so one
call covers all RNS limbs.  64-bit integers are enabled only inside this module's calls
(``jax.enable_x64``), leaving the process-wide JAX configuration alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import torch

from .. import bat
from ..barrett import Barrett, barrett_reduce
from ..ntt_matrix import matrix_ntt_constants, split_dims

_x64 = jax.enable_x64


def _digits(v):
    y = v + bat.DIGIT_BIAS
    return jnp.stack([(((y >> (8 * p)) & 255) - 128).astype(jnp.int8) for p in range(4)], axis=-1)


def _recombine(acc):
    a = acc.astype(jnp.int64)
    return a[..., 0] + (a[..., 1] << 8) + (a[..., 2] << 16) + (a[..., 3] << 24)


# The transforms are pure functions of (constants, data): the constants travel as jit arguments, so
# XLA compiles one program per shape instead of folding megabytes of literals into it.
def _red(k, z):
    return barrett_reduce(z, k["q"], k["bm"], k["bk"])


def _ein(k, spec: str, x, mats):
    d = _digits(bat.centered(x, k["q"]))
    return _recombine(jnp.einsum(spec, d, mats, preferred_element_type=jnp.int32))


def _forward(k, x):
    """(B, L, R, C) residues -> bit-reversed evaluations, same layout."""
    y = _red(k, _ein(k, "blrcq,lirqp->blicp", x, k["t1"]) + k["off_r"])
    y = _red(k, y * k["t2"])
    return _red(k, _ein(k, "blicq,lcjqp->blijp", y, k["t3"]) + k["off_c"])


def _inverse(k, x):
    y = _red(k, _ein(k, "blijq,ljcqp->blicp", x, k["u3"]) + k["off_c"])
    y = _red(k, y * k["u2"])
    return _red(k, _ein(k, "blicq,lriqp->blrcp", y, k["u1"]) + k["off_r"])


def _polymul(k, x, y):
    return _inverse(k, _red(k, _forward(k, x) * _forward(k, y)))


_FWD, _INV, _MUL = jax.jit(_forward), jax.jit(_inverse), jax.jit(_polymul)


class JaxMatrixNTT:
    """Batched negacyclic NTT/INTT for one (N, primes) on a JAX device."""

    def __init__(self, n: int, primes: Sequence[int], device: jax.Device | None = None):
        self.n = n
        self.primes = tuple(int(q) for q in primes)
        self.r, self.c = split_dims(n)
        self.device = device or jax.devices()[0]
        consts = [matrix_ntt_constants(n, q) for q in self.primes]
        lsz = len(consts)
        brs = [Barrett.for_modulus(q) for q in self.primes]
        with _x64(True):
            put = lambda a: jax.device_put(np.ascontiguousarray(a), self.device)  # noqa: E731
            blocks = lambda name: put(np.stack([bat.expand_constant(getattr(k, name), k.q) for k in consts]))  # noqa: E731
            col = lambda v: put(np.array(v, dtype=np.int64).reshape(lsz, 1, 1))  # noqa: E731
            self.consts = {name: blocks(name) for name in ("t1", "t3", "u3", "u1")}
            self.consts.update(
                t2=put(np.stack([k.t2 for k in consts])), u2=put(np.stack([k.u2 for k in consts])),
                q=col(self.primes), bm=col([b.m for b in brs]), bk=col([b.k for b in brs]),
                off_r=col([bat.reduction_offset(self.r, q) for q in self.primes]),
                off_c=col([bat.reduction_offset(self.c, q) for q in self.primes]),
            )

    def _run(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        lead = tensors[0].shape[:-2]
        shape = (-1, len(self.primes), self.r, self.c)
        with _x64(True):
            args = [jax.device_put(t.detach().cpu().numpy().reshape(shape), self.device) for t in tensors]
            out = np.array(fn(self.consts, *args))
        return torch.from_numpy(out).reshape(*lead, len(self.primes), self.n).to(tensors[0].device)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """NTT of (..., L, N) int64 residues (torch in, torch out)."""
        return self._run(_FWD, a)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """INTT of (..., L, N) bit-reversed evaluations."""
        return self._run(_INV, a)

    def polymul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Negacyclic products of (..., L, N) residues, b broadcasting against a, limb by limb."""
        return self._run(_MUL, a, b.expand(a.shape))

    def forward_device(self, x):
        """NTT on a JAX array already on the device, (B, L, R, C) layout (no host round trip)."""
        with _x64(True):
            return _FWD(self.consts, x)


@lru_cache(maxsize=32)
def plan(n: int, primes: tuple[int, ...]) -> JaxMatrixNTT:
    """Cached plan on JAX's default device."""
    return JaxMatrixNTT(n, primes)
