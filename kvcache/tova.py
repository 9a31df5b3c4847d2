"""TOVA (Oren et al.): keep the tokens the newest query attends to most, averaged over all heads.

A fixed cache of ``budget`` tokens; at each step the token (new one included) with the lowest
head-averaged attention from the last query is evicted, one decision for the whole layer.
"""

from __future__ import annotations

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps

from .base import Geometry, KVPolicy
from .slots import SlotLayer


class TovaPolicy(KVPolicy):
    name = "tova"

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        geometry = Geometry.of(config)
        return [SlotLayer(ops, geometry, self.budget, 0.0, accumulate=False, shared_heads=True)
                for _ in range(config.n_layers)]
