"""H2O (Zhang et al.): heavy hitters by accumulated attention plus a recent window, per KV head.

Half the budget is the recent window and half the heavy hitters (the paper's equal ratios). A KV
head's score for a token sums the attention it received from all the head's query heads (GQA).
"""

from __future__ import annotations

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps

from .base import Geometry, KVPolicy
from .slots import SlotLayer


class H2OPolicy(KVPolicy):
    name = "h2o"

    def __init__(self, budget: float, recent: float = 0.5) -> None:
        super().__init__(budget)
        self.recent = recent

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        geometry = Geometry.of(config)
        return [SlotLayer(ops, geometry, self.budget, self.recent, accumulate=True, shared_heads=False)
                for _ in range(config.n_layers)]
