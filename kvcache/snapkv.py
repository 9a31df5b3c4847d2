"""SnapKV (Li et al.): one-shot prompt compression from an observation window, per KV head.

After the prompt, the last ``window`` queries' attention to the earlier tokens is summed (over the
window and the head's query heads), smoothed by an average pool, and the top ``budget - window``
earlier tokens are kept together with the window itself; generated tokens are never evicted. On
shares the top-k is a secret one-hot and the kept keys and values are gathered by a product with it,
then registered as a new backend cache (a fixed operand again, so decode steps cost the query's size).
"""

from __future__ import annotations

import torch

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps, Value

from .base import Geometry, KVPolicy, budget_tokens, per_head


def pooling_matrix(n: int, kernel: int) -> torch.Tensor:
    """``s @ P`` is ``avg_pool1d(s, kernel, stride 1, padding kernel // 2)`` (padding counted, as SnapKV)."""
    index = torch.arange(n)
    return ((index[:, None] - index[None, :]).abs() <= kernel // 2).float() / kernel


class SnapKVLayer:
    def __init__(self, ops: TensorOps, geometry: Geometry, budget: float, window: int, kernel: int) -> None:
        self._ops = ops
        self._geometry = geometry
        self._fraction = budget
        self._window = window
        self._kernel = kernel
        self._inner = ops.new_kv_layer()
        self._prompt: tuple[Value, Value] | None = None
        self._compressed = False

    @property
    def length(self) -> int:
        return self._inner.length

    def append(self, keys: Value, values: Value) -> None:
        if self._prompt is None and not self._compressed:
            self._prompt = (keys, values)
        self._inner.append(keys, values)

    def scores(self, queries: Value) -> Value:
        return self._inner.scores(queries)

    def mix(self, weights: Value) -> Value:
        out = self._inner.mix(weights)
        if not self._compressed:
            self.end_prompt(weights)
        return out

    def end_prompt(self, weights: Value) -> None:
        with self._ops.section("kv-select"):
            self._compress(weights)
        self._compressed = True

    def release(self) -> None:
        self._inner.release()

    def _compress(self, weights: Value) -> None:
        keys, values = self._prompt
        n = keys.shape[1]
        budget = budget_tokens(self._fraction, n, floor=2)
        self._prompt = None
        if n <= budget:
            return
        window = min(self._window, budget // 2)
        prefix = n - window
        votes = per_head(weights, self._geometry.group)[:, :, -window:, :prefix].sum(dim=2).sum(dim=1)
        pooled = votes.matmul(pooling_matrix(prefix, self._kernel))
        # votes sum window x group probabilities; pooling averages them
        spread = float(window * self._geometry.group) + 1
        pick = self._ops.topk_onehot(pooled, budget - window, spread)  # (n_kv, budget - window, prefix)
        kept_keys = self._ops.cat([pick.matmul(keys[:, :prefix]), keys[:, prefix:]], dim=1)
        kept_values = self._ops.cat([pick.matmul(values[:, :prefix]), values[:, prefix:]], dim=1)
        self._inner.release()
        self._inner = self._ops.new_kv_layer()
        self._inner.append(kept_keys, kept_values)


class SnapKVPolicy(KVPolicy):
    name = "snapkv"

    def __init__(self, budget: float, window: int = 32, kernel: int = 7) -> None:
        super().__init__(budget)
        self.window = window
        self.kernel = kernel

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        geometry = Geometry.of(config)
        return [SnapKVLayer(ops, geometry, self.budget, self.window, self.kernel) for _ in range(config.n_layers)]
