"""Model registry and loading: HF checkpoints (LLaMA / GPT-2 families) -> ``ModelConfig`` + canonical weights.

Entry point: :func:`pinfer.models.registry.load_model`. Canonical weight names are documented in
:mod:`pinfer.models.weights`. Importing this package is cheap; ``load_model`` is imported lazily
because it pulls in transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pinfer.models.config import ModelConfig

if TYPE_CHECKING:
    from pinfer.models.registry import LoadedModel, load_model

__all__ = ["ModelConfig", "LoadedModel", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "LoadedModel"):
        from pinfer.models import registry

        return getattr(registry, name)
    raise AttributeError(name)
