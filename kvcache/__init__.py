"""KV-cache eviction and selection policies, each written once over ``pinfer.model.tensor_ops`` and run on
both backends (plaintext reference and secret shares): full, StreamingLLM, H2O, SnapKV, TOVA, Quest
and MPCache. ``make_policy(name, budget)`` builds one; ``Decoder(config, ops, kv_policy=...)`` uses it.
"""

from __future__ import annotations

from typing import Any

from .base import KVPolicy
from .full import FullPolicy
from .h2o import H2OPolicy
from .mpcache import MPCacheParams, MPCachePolicy
from .quest import QuestPolicy
from .snapkv import SnapKVPolicy
from .streaming import StreamingPolicy
from .tova import TovaPolicy

POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (FullPolicy, StreamingPolicy, H2OPolicy, SnapKVPolicy, TovaPolicy, QuestPolicy, MPCachePolicy)
}


def make_policy(name: str, budget: float, **options: Any) -> KVPolicy:
    """A policy by name (``POLICIES``); ``budget`` is the kept fraction of the prompt (ignored by full)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown KV policy {name!r}; known: {', '.join(POLICIES)}") from None
    return cls(budget, **options)


__all__ = ["KVPolicy", "MPCacheParams", "POLICIES", "make_policy"]
