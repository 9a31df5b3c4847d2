"""Raw arithmetic shares back into CrypTen's tensor type, at a chosen fixed-point scale.

The protocols above CrypTen compute on the parties' int64 shares directly (exact bit products,
single truncations, openings packed several to a word); this is the one place that puts such a
share back into an :class:`MPCTensor`.
"""

from __future__ import annotations

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor

from .sharing import FRACTIONAL_BITS


def wrap_share(like: MPCTensor, share: torch.Tensor, scale_bits: int) -> MPCTensor:
    """An arithmetic MPCTensor shaped by ``share``, in ``like``'s wrapper, with ``scale_bits``
    fractional bits."""
    out = like.shallow_copy()
    out._tensor = like._tensor.shallow_copy()
    out._tensor.share = share
    out._tensor.encoder = FixedPointEncoder(precision_bits=scale_bits)
    return out


def truncated_product(x: MPCTensor) -> MPCTensor:
    """``x`` with ``2 * FRACTIONAL_BITS`` fractional bits (an untruncated product of two encodings)
    brought back to ``FRACTIONAL_BITS`` by one local truncation of each share."""
    out = wrap_share(x, x.share.clone(), 2 * FRACTIONAL_BITS)
    out._tensor.div_(1 << FRACTIONAL_BITS)
    out._tensor.encoder = FixedPointEncoder(precision_bits=FRACTIONAL_BITS)
    return out
