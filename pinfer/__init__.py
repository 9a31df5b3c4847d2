"""pinfer: privacy-preserving transformer inference on secret shares.

``pinfer.Client`` (the client SDK, :mod:`pinfer.service.client`) is imported on first use, so that
``import pinfer`` stays light for the CLI and for nodes that never act as a client.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from pinfer.service.client import Client

        return Client
    raise AttributeError(f"module 'pinfer' has no attribute {name!r}")
