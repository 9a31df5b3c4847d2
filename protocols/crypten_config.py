"""Make CrypTen's configuration cheap to read.

CrypTen reads its OmegaConf configuration on nearly every share operation (``cfg.debug.validation_mode``
is checked on each attribute dispatch), and each OmegaConf lookup costs tens of microseconds; in a
decoder step that is a third of a party's CPU time. :func:`install` keeps OmegaConf as the source of
truth, so ``temp_override`` and assignments behave as before, and answers reads from a plain
attribute tree rebuilt whenever the configuration object is replaced.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from . import crypten_compat  # noqa: F401
from crypten.config.config import CrypTenConfig
from omegaconf import OmegaConf

_INSTALLED = "_pinfer_fast_reads"


class _ReadOnlyNode(SimpleNamespace):
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"set crypten.cfg['<section>.{name}'] instead: nested reads are a cache")


def _tree(value: Any) -> Any:
    if isinstance(value, dict):
        node = _ReadOnlyNode()
        for key, item in value.items():
            object.__setattr__(node, key, _tree(item))
        return node
    return value


def _setattr(self: CrypTenConfig, name: str, value: Any) -> None:
    _original_setattr(self, name, value)
    if name == "config" or not name.startswith("_"):
        object.__setattr__(self, "_fast", _tree(OmegaConf.to_container(self.config, resolve=True)))


def _getattribute(self: CrypTenConfig, name: str) -> Any:
    try:
        return object.__getattribute__(self, name)
    except AttributeError:
        node = object.__getattribute__(self, "_fast")
        for key in name.split("."):
            node = getattr(node, key)
        return node


_original_setattr = CrypTenConfig.__setattr__


def install() -> None:
    """Patch the configuration class once; the current ``crypten.cfg`` is re-read immediately."""
    if getattr(CrypTenConfig, _INSTALLED, False):
        return
    import crypten

    CrypTenConfig.__setattr__ = _setattr
    CrypTenConfig.__getattribute__ = _getattribute
    setattr(CrypTenConfig, _INSTALLED, True)
    crypten.cfg.config = crypten.cfg.config
