"""Make CrypTen 0.4.1 importable on torch 2.x, fix its decoding of negative values, and give its
Beaver matrix product pinfer's BLAS-speed ring product (:mod:`pinfer.protocols.ring_matmul`).

CrypTen's ONNX converter imports ``torch.onnx._internal.registration``, which torch moved under
``torchscript_exporter`` in 2.x. pinfer never uses the ONNX conversion (models are written directly on
CrypTen ops); the alias only lets ``import crypten`` succeed. Import this module (or any
``pinfer.protocols`` module) before crypten.
"""

from __future__ import annotations

import importlib
import sys

from .ring_matmul import ring_matmul

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


_crypten_beaver_matmul = None  # CrypTen's own, kept for its actively secure variant


def _ring_beaver_matmul(x, y):
    """CrypTen's Beaver product for ``matmul`` (``beaver.__beaver_protocol``) with its three local
    products in the ring taken by :func:`ring_matmul` instead of torch's int64 kernel."""
    import crypten
    from crypten.config import cfg
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    if cfg.mpc.active_security:  # the triple check is CrypTen's; pinfer runs passively secure
        return _crypten_beaver_matmul(x, y)
    if x.device != y.device:
        raise ValueError(f"x lives on device {x.device} but y on device {y.device}")
    a, b, c = crypten.mpc.get_default_provider().generate_additive_triple(
        x.size(), y.size(), "matmul", device=x.device
    )
    with IgnoreEncodings([a, b, x, y]):
        epsilon, delta = ArithmeticSharedTensor.reveal_batch([x - a, y - b])
    c._tensor += ring_matmul(epsilon, b._tensor)
    c._tensor += ring_matmul(a._tensor, delta)
    c += ring_matmul(epsilon, delta)
    return c


def ring_beaver_matmul() -> None:
    """Install :func:`_ring_beaver_matmul` as CrypTen's Beaver ``matmul``; idempotent."""
    global _crypten_beaver_matmul
    from crypten.mpc.primitives import beaver

    if beaver.matmul is not _ring_beaver_matmul:
        _crypten_beaver_matmul = beaver.matmul
        beaver.matmul = _ring_beaver_matmul


install()
fix_negative_decoding()
ring_beaver_matmul()
