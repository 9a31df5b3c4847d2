"""StreamingLLM (Xiao et al.): attention sinks plus a recent window; the kept positions are public.

The rule ignores the query and looks only at positions, so the kept set depends on the length alone
and may be public. On shares the backend's keys stay a fixed operand (a product with them costs only
the query's size), scores are taken for every cached token and the kept columns sliced out for free;
the softmax, which costs per entry on shares, runs on the budget only. Positions keep their original
RoPE angles (keys are cached after rotation), i.e. no rolling re-assignment.
"""

from __future__ import annotations

import torch

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps, Value

from .base import KVPolicy, budget_tokens


class StreamingLayer:
    def __init__(self, ops: TensorOps, inner: KVLayer, budget: float, sinks: int) -> None:
        self._ops = ops
        self._inner = inner
        self._fraction = budget
        self._sinks = sinks
        self._budget: int | None = None
        self._decoding = False

    @property
    def length(self) -> int:
        index = self._index()
        return self._inner.length if index is None else len(index)

    def _index(self) -> torch.Tensor | None:
        length = self._inner.length
        if not self._decoding or self._budget is None or length <= self._budget:
            return None
        recent = self._budget - self._sinks
        return torch.cat([torch.arange(self._sinks), torch.arange(length - recent, length)])

    def append(self, keys: Value, values: Value) -> None:
        if self._budget is None:
            self._budget = budget_tokens(self._fraction, keys.shape[1], floor=self._sinks + 1)
        self._inner.append(keys, values)

    def scores(self, queries: Value) -> Value:
        full = self._inner.scores(queries)
        index = self._index()
        return full if index is None else full[..., index]

    def mix(self, weights: Value) -> Value:
        index = self._index()
        if index is None:
            out = self._inner.mix(weights)
        else:
            scatter = torch.zeros(len(index), self._inner.length)
            scatter[torch.arange(len(index)), index] = 1.0
            with self._ops.section("kv-select"):
                weights = weights.matmul(scatter)
            out = self._inner.mix(weights)
        if not self._decoding:
            self.end_prompt(weights)
        return out

    def end_prompt(self, weights: Value) -> None:
        self._decoding = True

    def release(self) -> None:
        self._inner.release()


class StreamingPolicy(KVPolicy):
    name = "streamingllm"

    def __init__(self, budget: float, sinks: int = 4) -> None:
        super().__init__(budget)
        self.sinks = sinks

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        return [StreamingLayer(ops, ops.new_kv_layer(), self.budget, self.sinks) for _ in range(config.n_layers)]
