"""Make CrypTen 0.4.1 importable on torch 2.x.

CrypTen's ONNX converter imports ``torch.onnx._internal.registration``, which torch moved under
``torchscript_exporter`` in 2.x. pinfer never uses the ONNX conversion (models are written directly on
CrypTen ops); the alias only lets ``import crypten`` succeed. Import this module before crypten, or
import crypten through :func:`load_crypten`.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

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


def load_crypten() -> ModuleType:
    """Return the crypten module with the torch 2.x alias in place."""
    install()
    return importlib.import_module("crypten")


install()
