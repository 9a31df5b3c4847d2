"""Quest (Tang et al.): query-aware page selection by an upper bound on each page's attention score.

Pages of ``page`` tokens keep their keys' per-channel max M and min m. A page's bound for a query q is
``sum_i max(q_i M_i, q_i m_i) = q+ . M + q- . m`` with ``q+ = [q >= 0] q`` and ``q- = q - q+``, which
is linear in the stored summaries once the query's signs are known: on shares that costs one
comparison per query channel, not one per page and channel. A KV head sums its query heads' bounds
(GQA). The top pages within the budget, plus the incomplete last page, are attended; nothing is
evicted. The first ``dense_layers`` layers attend in full, as in Quest.
"""

from __future__ import annotations

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps, Value

from .base import SCORE_SCALE, SCORE_SPREAD, Geometry, KVPolicy
from .clusters import ClusteredLayer, stack


class QuestLayer(ClusteredLayer):
    def __init__(self, ops: TensorOps, geometry: Geometry, budget: float, page: int, resolution: float | None,
                 trace: list[tuple[int, Value]] | None, index: int) -> None:
        super().__init__(ops, geometry, budget, block=page, fine=page)
        self._resolution = resolution
        self._trace = trace
        self._index = index

    def _prompt_keep(self, weights: Value) -> None:
        return None  # Quest never evicts

    def _select(self, queries: Value) -> Value | None:
        if self.fine.count == 0:
            return None
        sign = self.ops.argmax_onehot(stack(self.ops, [queries, -queries], dim=-1))[..., 0]
        positive = sign * queries
        negative = queries - positive
        query = self.ops.cat([positive.sum(dim=1, keepdim=True), negative.sum(dim=1, keepdim=True)], dim=-1)
        onehot = self.ops.topk_onehot(self.fine.scores(query * SCORE_SCALE), self.fine_budget(),
                                       SCORE_SPREAD, self._resolution)
        if self._trace is not None:
            self._trace.append((self._index, onehot))
        return onehot


class QuestPolicy(KVPolicy):
    name = "quest"

    def __init__(self, budget: float, page: int = 16, dense_layers: int = 2,
                 resolution: float | None = None) -> None:
        """``resolution``: pages whose scaled bounds differ by less may be ranked either way on
        shares, in narrower comparison lanes (None: exact, see ``MPCacheParams.resolution``)."""
        super().__init__(budget)
        self.page = page
        self.dense_layers = dense_layers
        self.resolution = resolution
        self.trace: list[tuple[int, Value]] | None = None

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        geometry = Geometry.of(config)
        return [ops.new_kv_layer() if i < self.dense_layers
                else QuestLayer(ops, geometry, self.budget, self.page, self.resolution, self.trace, i)
                for i in range(config.n_layers)]
