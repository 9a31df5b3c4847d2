"""BFV-style RLWE encryption over an RNS ciphertext modulus, built on the accel NTT.

Ring R_Q = Z_Q[X]/(X^N + 1) with Q = prod q_i (word-size NTT primes), plaintext ring R_t with
t = 2^k, k <= 64, coefficient encoding (message coefficient i is polynomial coefficient i, which is
what Cheetah's matrix-vector encoding needs).  A plaintext is an int64 tensor (..., N) whose entries
are residues mod t (for k = 64 the int64 bit pattern *is* the residue, i.e. CrypTen's ring Z_2^64).

Ciphertexts encrypt Delta m + v with Delta = floor(Q/t); decryption returns round(t (c0 + c1 s) / Q)
mod t.  Every ciphertext carries a worst-case bound on ||v||_inf, updated by each operation with the
formulas in :mod:`pinfer.accel.params`, so callers (and tests) can check a computation will decrypt
before running it.  Keys come from os.urandom via :mod:`pinfer.accel.sampling`; their repr hides
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import sampling
from .params import BFVParams, fresh_pk_noise_bound, ptxt_mul_noise_bound
from .polymul import intt, ntt, polymul
from .rns import RNSBasis


@dataclass(frozen=True, repr=False)
class SecretKey:
    """Ternary s in RNS/NTT form.  Never printed."""

    s_ntt: torch.Tensor  # (L, N)

    def __repr__(self) -> str:
        return "SecretKey(<hidden>)"


@dataclass(frozen=True, repr=False)
class PublicKey:
    """(b, a) = (-(a s) + e, a), kept in NTT form for encryption."""

    b_ntt: torch.Tensor
    a_ntt: torch.Tensor

    def __repr__(self) -> str:
        return "PublicKey(...)"


@dataclass(frozen=True)
class Ciphertext:
    """data[..., 0, :, :] = c0, data[..., 1, :, :] = c1, each (L, N) residues; noise_bound >= ||v||_inf."""

    data: torch.Tensor = field(repr=False)
    noise_bound: int

    @property
    def shape(self) -> torch.Size:
        """Batch shape (the leading axes before (2, L, N))."""
        return self.data.shape[:-3]


class BFV:
    """Key generation, encryption, decryption and the linear homomorphic operations."""

    def __init__(self, params: BFVParams, device: torch.device | str = "cpu", backend: str | None = None):
        self.params = params
        self.device = torch.device(device)
        self.backend = backend
        self.basis = RNSBasis(params.primes)
        self._delta = self.basis.scalar(params.delta, self.device)

    # ---- helpers ------------------------------------------------------------------------------
    def _ntt(self, x: torch.Tensor) -> torch.Tensor:
        return ntt(x, self.params.primes, backend=self.backend, reduced=True)

    def _intt(self, x: torch.Tensor) -> torch.Tensor:
        return intt(x, self.params.primes, backend=self.backend, reduced=True)

    def _small(self, x: torch.Tensor) -> torch.Tensor:
        """Signed small polynomial(s) (..., N) -> residues (..., L, N) on the device."""
        return self.basis.from_signed(x.to(self.device))

    def centered_plain(self, m: torch.Tensor) -> torch.Tensor:
        """Residues mod t (int64) -> centered representatives in [-t/2, t/2)."""
        k = self.params.plain_bits
        if k == 64:
            return m.to(torch.int64)  # two's complement already is the centered representative
        t = self.params.t
        r = torch.remainder(m.to(torch.int64), t)
        return r - t * (r >= t // 2)

    def _check_plain(self, m: torch.Tensor) -> None:
        if m.dtype != torch.int64 or m.shape[-1] != self.params.n:
            raise ValueError(f"plaintext must be int64 (..., {self.params.n})")

    # ---- keys ---------------------------------------------------------------------------------
    def keygen(self) -> tuple[SecretKey, PublicKey]:
        """Fresh ternary secret key and its public key (b, a) = (-(a s) + e, a)."""
        n, primes = self.params.n, self.params.primes
        s_ntt = self._ntt(self._small(sampling.ternary((n,))))
        a_ntt = self._ntt(sampling.uniform_rns(primes, (n,)).to(self.device))
        e = self._small(sampling.centered_binomial((n,)))
        as_ = self._intt(self.basis.reduce_product(a_ntt, s_ntt))
        b = self.basis.add(self.basis.negate(as_), e)
        return SecretKey(s_ntt), PublicKey(self._ntt(b), a_ntt)

    # ---- encryption ---------------------------------------------------------------------------
    def _scaled(self, m: torch.Tensor) -> torch.Tensor:
        return self.basis.reduce_product(self._small(self.centered_plain(m)), self._delta)

    def encrypt(self, m: torch.Tensor, pk: PublicKey) -> Ciphertext:
        """Public-key encryption of plaintext(s) (..., N): (b u + e0 + Delta m, a u + e1)."""
        self._check_plain(m)
        lead, n = tuple(m.shape[:-1]), self.params.n
        u_ntt = self._ntt(self._small(sampling.ternary(lead + (n,))))
        bu_au = self._intt(torch.stack([self.basis.reduce_product(u_ntt, pk.b_ntt),
                                        self.basis.reduce_product(u_ntt, pk.a_ntt)], dim=-3))
        e = self._small(sampling.centered_binomial(lead + (2, n)))
        data = self.basis.add(bu_au, e)
        data[..., 0, :, :] = self.basis.add(data[..., 0, :, :], self._scaled(m))
        return Ciphertext(data, fresh_pk_noise_bound(n))

    def encrypt_symmetric(self, m: torch.Tensor, sk: SecretKey) -> Ciphertext:
        """Secret-key encryption (-(a s) + e + Delta m, a): smaller noise (eta) than public-key."""
        self._check_plain(m)
        lead, n = tuple(m.shape[:-1]), self.params.n
        a = sampling.uniform_rns(self.params.primes, lead + (n,)).to(self.device)
        as_ = self._intt(self.basis.reduce_product(self._ntt(a), sk.s_ntt))
        e = self._small(sampling.centered_binomial(lead + (n,)))
        c0 = self.basis.add(self.basis.add(self.basis.negate(as_), e), self._scaled(m))
        return Ciphertext(torch.stack([c0, a], dim=-3), sampling.CBD_ETA)

    # ---- decryption ---------------------------------------------------------------------------
    def _phase(self, ct: Ciphertext, sk: SecretKey) -> np.ndarray:
        """c0 + c1 s as centered Python integers (..., N)."""
        c1s = self._intt(self.basis.reduce_product(self._ntt(ct.data[..., 1, :, :]), sk.s_ntt))
        return self.basis.to_integers(self.basis.add(ct.data[..., 0, :, :], c1s))

    def _to_plain_tensor(self, values: np.ndarray) -> torch.Tensor:
        half = 1 << 63
        wrapped = np.vectorize(lambda v: v - (1 << 64) if v >= half else v, otypes=[object])(values)
        return torch.tensor(wrapped.astype(np.int64))

    def decrypt(self, ct: Ciphertext, sk: SecretKey) -> torch.Tensor:
        """round(t (c0 + c1 s) / Q) mod t, as int64 residues (..., N)."""
        q, t = self.params.q, self.params.t
        x = self._phase(ct, sk)
        m = ((2 * t * x + q) // (2 * q)) % t
        return self._to_plain_tensor(m)

    def noise(self, ct: Ciphertext, sk: SecretKey, m: torch.Tensor) -> int:
        """Measured ||v||_inf of ct against plaintext m (for tests and noise-budget reports)."""
        q = self.params.q
        x = self._phase(ct, sk)
        dm = self.centered_plain(m).cpu().numpy().astype(object) * self.params.delta
        v = (x - dm) % q
        v = np.where(v > q // 2, v - q, v)
        return int(np.max(np.abs(v))) if v.size else 0

    # ---- homomorphic operations ---------------------------------------------------------------
    def add(self, x: Ciphertext, y: Ciphertext) -> Ciphertext:
        """Encrypts m_x + m_y mod t.  Noise: v_x + v_y plus r_t if the message sum wraps mod t."""
        return Ciphertext(self.basis.add(x.data, y.data), x.noise_bound + y.noise_bound + self.params.r_t)

    def add_plain(self, x: Ciphertext, m: torch.Tensor) -> Ciphertext:
        """Encrypts m_x + m mod t (adds Delta m to c0).  Noise grows by at most r_t (wrap)."""
        self._check_plain(m)
        data = x.data.clone()
        data[..., 0, :, :] = self.basis.add(data[..., 0, :, :], self._scaled(m))
        return Ciphertext(data, x.noise_bound + self.params.r_t)

    def multiply_plain(self, x: Ciphertext, p: torch.Tensor) -> Ciphertext:
        """Encrypts m_x * p in R_t: both components times the centered lift of p (one NTT product).

        Noise bound from :func:`pinfer.accel.params.ptxt_mul_noise_bound` with ||p||_inf measured.
        """
        self._check_plain(p)
        pc = self.centered_plain(p)
        p_rns = self._small(pc).unsqueeze(-3)  # broadcast over (c0, c1)
        data = polymul(x.data, p_rns, self.params.primes, backend=self.backend, reduced=True)
        plain_inf = int(pc.abs().max().item()) if pc.numel() else 0
        if self.params.plain_bits == 64 and (pc == torch.iinfo(torch.int64).min).any():
            plain_inf = 1 << 63
        bound = ptxt_mul_noise_bound(self.params.n, self.params.t, self.params.r_t, x.noise_bound, plain_inf)
        return Ciphertext(data, bound)
