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
            self.t1, self.t3, self.u3, self.u1 = (blocks(x) for x in ("t1", "t3", "u3", "u1"))
            self.t2 = put(np.stack([k.t2 for k in consts]))
            self.u2 = put(np.stack([k.u2 for k in consts]))
            col = lambda v: put(np.array(v, dtype=np.int64).reshape(lsz, 1, 1))  # noqa: E731
            self.q = col(self.primes)
            self.bm = col([b.m for b in brs])
            self.bk = col([b.k for b in brs])
            self.off_r = col([bat.reduction_offset(self.r, q) for q in self.primes])
            self.off_c = col([bat.reduction_offset(self.c, q) for q in self.primes])
        self._fwd = jax.jit(self._forward)
        self._inv = jax.jit(self._inverse)
        self._mul = jax.jit(self._polymul)

    def _red(self, z):
        return barrett_reduce(z, self.q, self.bm, self.bk)

    def _ein(self, spec: str, x, mats):
        d = _digits(bat.centered(x, self.q))
        return _recombine(jnp.einsum(spec, d, mats, preferred_element_type=jnp.int32))

    def _forward(self, x):
        """(B, L, R, C) residues -> bit-reversed evaluations, same layout."""
        y = self._red(self._ein("blrcq,lirqp->blicp", x, self.t1) + self.off_r)
        y = self._red(y * self.t2)
        return self._red(self._ein("blicq,lcjqp->blijp", y, self.t3) + self.off_c)

    def _inverse(self, x):
        y = self._red(self._ein("blijq,ljcqp->blicp", x, self.u3) + self.off_c)
        y = self._red(y * self.u2)
        return self._red(self._ein("blicq,lriqp->blrcp", y, self.u1) + self.off_r)

    def _polymul(self, x, y):
        return self._inverse(self._red(self._forward(x) * self._forward(y)))

    def _run(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        lead = tensors[0].shape[:-2]
        shape = (-1, len(self.primes), self.r, self.c)
        with _x64(True):
            args = [jax.device_put(t.detach().cpu().numpy().reshape(shape), self.device) for t in tensors]
            out = np.array(fn(*args))
        return torch.from_numpy(out).reshape(*lead, len(self.primes), self.n).to(tensors[0].device)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """NTT of (..., L, N) int64 residues (torch in, torch out)."""
        return self._run(self._fwd, a)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """INTT of (..., L, N) bit-reversed evaluations."""
        return self._run(self._inv, a)

    def polymul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Negacyclic products of (..., L, N) residues, b broadcasting against a, limb by limb."""
        return self._run(self._mul, a, b.expand(a.shape))

    def forward_device(self, x):
        """NTT on a JAX array already on the device, (B, L, R, C) layout (no host round trip)."""
        with _x64(True):
            return self._fwd(x)


@lru_cache(maxsize=32)
def plan(n: int, primes: tuple[int, ...]) -> JaxMatrixNTT:
    """Cached plan on JAX's default device."""
    return JaxMatrixNTT(n, primes)
