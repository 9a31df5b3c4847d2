"""Route all of CrypTen's share randomness through AES-CTR streams.

CrypTen draws masks and pseudo-random zero sharings with ``torch.randint`` on ``torch.Generator``
objects (a Mersenne twister) seeded from 64-bit values. :func:`install` replaces the generators with
:class:`AesCtrStream` objects keyed by 256-bit seeds and patches CrypTen's two sampling helpers (and the
modules that imported them by name) so they draw from those streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import crypten_compat  # noqa: F401
import crypten
import crypten.common.rng as crypten_rng_module
import crypten.mpc.primitives.arithmetic as crypten_arithmetic
import crypten.mpc.primitives.binary as crypten_binary

from .csprng import AesCtrStream

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class PartySeeds:
    """The seeds one party needs: shared with the previous and next party, private, and common."""

    prev: bytes
    next: bytes
    local: bytes
    common: bytes


def _as_shape(size: object) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,)
    return tuple(int(s) for s in size)  # type: ignore[union-attr]


def _stream_for(generator: object) -> AesCtrStream:
    if generator is None:
        generator = crypten.generators["local"][_CPU]
    if not isinstance(generator, AesCtrStream):
        raise TypeError("pinfer draws shares only from AES-CTR streams; got a non-CSPRNG generator")
    return generator


def _check_device(kwargs: dict) -> None:
    device = kwargs.get("device")
    if device is not None and torch.device(device).type != "cpu":
        raise NotImplementedError("the MPC runtime keeps shares on the CPU")


def generate_random_ring_element(size, ring_size=2**64, generator=None, **kwargs) -> torch.Tensor:
    """Drop-in for CrypTen's helper: uniform Z_2^64 elements from a CSPRNG stream."""
    if ring_size != 2**64:
        raise ValueError("only the ring Z_2^64 is supported")
    _check_device(kwargs)
    return _stream_for(generator).ring_elements(_as_shape(size))


def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs) -> torch.Tensor:
    """Drop-in for CrypTen's helper: uniform k-bit integers from a CSPRNG stream."""
    _check_device(kwargs)
    return _stream_for(generator).bits(_as_shape(size), 64 if bitlength is None else bitlength)


def install(seeds: PartySeeds) -> None:
    """Key CrypTen's generators with ``seeds`` and make its samplers use them."""
    streams = {
        "prev": AesCtrStream(seeds.prev),
        "next": AesCtrStream(seeds.next),
        "local": AesCtrStream(seeds.local),
        "global": AesCtrStream(seeds.common),
    }
    for key, stream in streams.items():
        crypten.generators[key] = {_CPU: stream}
    for module in (crypten_rng_module, crypten_arithmetic, crypten_binary):
        if hasattr(module, "generate_random_ring_element"):
            module.generate_random_ring_element = generate_random_ring_element
        if hasattr(module, "generate_kbit_random_tensor"):
            module.generate_kbit_random_tensor = generate_kbit_random_tensor
