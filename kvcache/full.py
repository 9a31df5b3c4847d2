"""The full cache: every token attended at every step (the reference the policies are measured against)."""

from __future__ import annotations

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps

from .base import KVPolicy


class FullPolicy(KVPolicy):
    name = "full"

    def __init__(self, budget: float = 1.0) -> None:
        super().__init__(budget)

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        return [ops.new_kv_layer() for _ in range(config.n_layers)]
