"""Fixed-point encoding and additive sharing over Z_2^64, as the data owner (client, model owner) does it.

Party 0 receives dense shares; every other party receives only a 32-byte seed and expands its shares
itself from an AES-CTR stream, in the order of the tensor names. For a model that is one seed instead
of a copy of the weights per party.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from .csprng import AesCtrStream, fresh_seed

# The fractional bits of every fixed-point value pinfer puts on shares (CrypTen's default precision).
FRACTIONAL_BITS = 16
SCALE = 1 << FRACTIONAL_BITS
_LIMIT = 2.0**62 / SCALE


def encode(values: torch.Tensor) -> torch.Tensor:
    """Round to the fixed-point ring representation used by CrypTen (16 fractional bits)."""
    values = values.detach().to(torch.float64)
    if values.numel() and values.abs().max().item() >= _LIMIT:
        raise ValueError("value too large for the fixed-point encoding")
    return torch.round(values * SCALE).to(torch.int64)


def decode(encoded: torch.Tensor) -> torch.Tensor:
    return encoded.to(torch.float64).div(SCALE).float()


@dataclass
class ShareBundle:
    """One party's shares of a named set of tensors: dense (party 0) or a seed to expand."""

    shapes: dict[str, tuple[int, ...]]
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    seed: bytes | None = None

    def expand(self) -> dict[str, torch.Tensor]:
        return dict(self.consume())

    def consume(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, share)`` in name order, letting go of each dense share once yielded.

        For a model this keeps one tensor's share in flight instead of a second copy of the weights.
        """
        stream = None if self.seed is None else AesCtrStream(self.seed)
        for name, shape in sorted(self.shapes.items()):
            yield name, self.dense.pop(name) if stream is None else stream.ring_elements(shape)


def share(tensors: Mapping[str, torch.Tensor], n_parties: int, encoded: bool = False) -> list[ShareBundle]:
    """Split ``tensors`` (encoded to fixed point unless ``encoded``) into ``n_parties`` bundles."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    others = [ShareBundle(shapes, seed=fresh_seed()) for _ in range(n_parties - 1)]
    streams = [other.consume() for other in others]
    dense = {}
    for name in sorted(tensors):
        value = tensors[name] if encoded else encode(tensors[name])
        for stream in streams:
            streamed_name, other_share = next(stream)
            assert streamed_name == name
            value = value - other_share
        dense[name] = value.contiguous()
    return [ShareBundle(shapes, dense=dense), *others]
