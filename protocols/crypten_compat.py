"""Make CrypTen 0.4.1 importable on torch 2.x, and fix its decoding of negative values.

CrypTen's ONNX converter imports ``torch.onnx._internal.registration``, which torch moved under
``torchscript_exporter`` in 2.x. pinfer never uses the ONNX conversion (models are written directly on
CrypTen ops); the alias only lets ``import crypten`` succeed. Import this module (or any
``pinfer.protocols`` module) before crypten.
"""

from __future__ import annotations

import importlib
import sys

_LEGACY_REGISTRATION = "torch.onnx._internal.registration"
_MOVED_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"


def install() -> None:
    """Alias the module path CrypTen expects; idempotent."""
    if _LEGACY_REGISTRATION in sys.modules:
        return
    try:
        importlib.import_module(_LEGACY_REGISTRATION)
        return
    except ModuleNotFoundError:
        pass
    sys.modules[_LEGACY_REGISTRATION] = importlib.import_module(_MOVED_REGISTRATION)


def _decode(self, tensor):
    """Fixed-point decoding with floor division by the scale for every sign.

    CrypTen 0.4.1 divides negative encodings by ``scale - 1``, which turns values just above a
    negative integer (-40.9995) into the integer below it (-41.9997) when revealed.
    """
    if tensor is None:
        return None
    if self._scale == 1:
        return tensor.data
    whole = tensor.div(self._scale, rounding_mode="floor")
    fraction = tensor - whole * self._scale
    return (whole.double() + fraction.double() / self._scale).float().data


def fix_negative_decoding() -> None:
    from crypten.encoder import FixedPointEncoder

    FixedPointEncoder.decode = _decode


install()
fix_negative_decoding()
