"""MPCache (Zeng et al., NeurIPS'25): look-once static eviction plus query-aware cluster selection,
built for secret shares (``specs/mpcache.md``). Every component of the authors' method is here and
parameterised (``MPCacheParams``); the defaults switch off the two that cost SmolLM2 its pass keys
(static eviction, cross-layer sharing) and halve the fine clusters (see ``MPCacheParams``).

* Static, once after the prompt: each token's importance is the highest head-averaged attention it
  gets from the last 20% of prompt queries (10% beyond 24k tokens). Threshold mode keeps tokens at or
  above ``tau`` (the authors' code); budget mode keeps the top ``static_keep`` fraction. One keep set
  per layer, for all heads. On shares the keep bits stay secret: an evicted token is not moved out of
  the cache (oblivious compaction would need a secret shuffle) but masked inside every gathered cluster.
* Dynamic, each decode step, one selection per KV head from the sum of its query heads: clusters of
  ``coarse`` and ``fine`` contiguous tokens with per-channel key max/min kept incrementally;
  similarity ``q . (alpha max + (1 - alpha) min)``, alpha = 0.6, computed as ``[alpha q | (1-alpha) q]``
  against the stored ``[max | min]``; the top ``ratio1`` of coarse clusters, then among their children
  the fine clusters the budget allows; the first and last complete clusters always, and the incomplete
  last block (the tail) always. The kept coarse clusters' children's scores are picked from every fine
  cluster's scores, and the fine one-hot is built from the two levels' one-hots by a product.
* Cross-layer sharing: the first ``own_first`` and last ``own_last`` layers select on their own; in
  between, each odd layer reuses the previous layer's static keep bits and dynamic selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, Operand, TensorOps, Value

from .base import SCORE_SCALE, SCORE_SPREAD, Geometry, KVPolicy, per_head, zeros_like
from .clusters import ClusteredLayer, ClusterStore, extremes, stack

FIRST_CLUSTER_BONUS = 2048.0
"""Added to the first cluster's score so that it always ranks first, half of it to the last cluster's
so that it ranks second (public: both are always kept). Both exceed the range of scaled scores
(``SCORE_SCALE``) and stay inside ``SCORE_SPREAD`` with it."""


@dataclass(frozen=True)
class MPCacheParams:
    """Defaults follow the authors' code (ratio1, alpha, the 20% window, the first and last clusters
    kept) except three components, each switched off or changed because it clearly cost passkey hits on
    SmolLM2-135M. Ablation on held-out seeds 10-12 (1k/2k/4k prompts x 9 depths = 81, full cache 0.938;
    passkey at budgets 0.05/0.1/0.2, fidelity top-1 at 0.1 over 3 held-out 2k samples; H100, commit
    dfc8bd4; ``bench-out/mpcache-ablation-heldout.json``):

    * the authors' defaults (static keep 0.8, sharing, 32/16 clusters): 0.185/0.383/0.593, top-1 0.83;
    * static eviction off (``static_keep`` = 1.0): 0.296/0.605/0.840. Any static eviction dropped the
      pass key: keep 0.8 as above, the authors' threshold mode (``tau`` 1e-3) 0.148/0.247/0.321. On
      shares it saves no cost either (evicted tokens are masked, not compacted);
    * cross-layer sharing off (``own_first`` >= the layer count: every layer selects on its own):
      0.247/0.481/0.654 alone, 0.358/0.716/0.889 with static eviction off. It doubles the selections
      (kv-select cost) of the middle layers;
    * fine clusters of 8 tokens instead of 16 (coarse 16/fine 8 instead of 32/16): 0.432/0.593/0.704
      alone (64/32: 0.099/0.235/0.407). Budgets here are 51-820 tokens, so 16-token clusters are
      coarse; the authors sized theirs for LongBench prompts of many thousand tokens;
    * all three with coarse 16: 0.741/0.901/0.914 (79%/96%/97% of the full cache's hits), top-1
      0.74/0.84/0.94, KL 0.11/0.05/0.02.

    A second ablation on the same held-out prompts (commit f0b6150, ``bench-out/mpcache-ablation2-heldout.json``)
    chose the coarse size by cost: coarse 32 over fine 8 (these defaults) keeps 0.704/0.901/0.901
    (top-1 0.85 at 0.1, KL 0.06) and ranks a quarter of coarse pairs (2,016 instead of 8,128 per KV
    head at 2,048 tokens); ``ratio1`` 0.25 gave 0.691/0.864/0.926, coarse 32 with ``ratio1`` 0.25 or
    0.125 0.778 and 0.605 at 0.1.

    ``resolution`` (scaled-score units) lets the shares rank clusters closer than it either way, in
    narrower comparison lanes (``protocols.oblivious``): 0.5 halves the ranking's bytes but, on
    SmolLM2 with 512 cached tokens, only 10 of 18 (layer, KV head, step) selections then matched the
    plaintext ones (1/16: 15 of 18, exact: 18 of 18), so the default ranks exactly.

    ``ratio1`` 0.25-1.0, ``alpha`` 0.5-0.8, ``window`` 0.1-0.4 and ``keep_last`` moved passkey by at most
    6 of 81 prompts, in no consistent direction over the budgets. ``tau`` applies to head-averaged attention in [0, 1] and cannot resolve
    below the 2^-16 fixed-point step on shares."""

    coarse: int = 32
    fine: int = 8
    ratio1: float = 0.5
    alpha: float = 0.6
    static: str = "budget"  # or "threshold" (the authors' mode)
    static_keep: float = 1.0  # 1.0: no static eviction
    tau: float = 1e-3
    window: float = 0.2
    own_first: int = 1 << 16  # >= the layer count: no layer reuses another's selection
    own_last: int = 2
    keep_last: bool = True
    resolution: float | None = None  # None: rank exactly (see the docstring)


@dataclass
class _Board:
    """What a layer publishes for the next layer to reuse within one forward."""

    keeps: dict[int, Value]
    selections: dict[int, Value | None]


def sharing_source(index: int, n_layers: int, own_first: int, own_last: int) -> int | None:
    """The layer whose selection layer ``index`` reuses, or None when it selects on its own."""
    if index < own_first or index >= n_layers - own_last:
        return None
    return index - 1 if (index - own_first) % 2 == 1 else None


class MPCacheLayer(ClusteredLayer):
    def __init__(self, ops: TensorOps, geometry: Geometry, budget: float, params: MPCacheParams,
                 index: int, source: int | None, board: _Board, trace: list[tuple[int, Value]] | None) -> None:
        super().__init__(ops, geometry, budget, block=params.coarse, fine=params.fine)
        self.params = params
        self.coarse = ClusterStore(ops)
        self._index = index
        self._source = source
        self._board = board
        self._trace = trace

    def release(self) -> None:
        super().release()
        self.coarse.release()

    def _prompt_keep(self, weights: Value) -> Value | None:
        if self._source is not None:
            keep = self._board.keeps[self._source]
        else:
            keep = self._static_keep(weights)
        self._board.keeps[self._index] = keep
        return keep

    def _static_keep(self, weights: Value) -> Value | None:
        p, g = self.params, self.geometry
        if p.static == "budget" and p.static_keep >= 1.0:
            return None
        n = weights.shape[-1]
        share = p.window if n <= 24000 else p.window / 2
        window = max(1, math.floor(share * n))
        heads = g.n_kv * g.group
        # Head-summed attention of the window queries; importance = its maximum over the window.
        received = per_head(weights, g.group)[:, :, n - window :, :].sum(dim=0).sum(dim=0)  # (window, n)
        importance, _ = extremes(self.ops, received.transpose(0, 1))  # (n,)
        if p.static == "threshold":
            margin = importance - p.tau * heads  # mean >= tau  <=>  sum >= tau * heads
            # importance is a sum of `heads` probabilities: |margin| <= heads
            keep = self.ops.argmax_onehot(stack(self.ops, [margin, -margin], dim=-1), spread=2.0 * heads + 1)[..., 0]
        elif p.static == "budget":
            kept = min(n, max(1, math.ceil(p.static_keep * n)))
            keep = self.ops.topk_onehot(importance.unsqueeze(0), kept, spread=float(heads) + 1).sum(dim=-2)[0]
        else:
            raise ValueError(f"unknown static mode {p.static!r}")
        return self.ops.cat([keep.unsqueeze(0)] * g.n_kv, dim=0).unsqueeze(-1)

    def _on_fine_clusters(self, summaries: Value) -> None:
        """Complete coarse clusters: extremes over their children. The coarse level is only scored,
        never gathered (its children's scores come from the fine level), so its payload is empty."""
        n_kv, count, width = summaries.shape
        hd, ratio = width // 2, self.params.coarse // self.params.fine
        children = summaries.reshape(n_kv, count // ratio, ratio, width)
        top, bottom = extremes(self.ops, children.transpose(2, 3))
        coarse = self.ops.cat([top[..., :hd], bottom[..., hd:]], dim=-1)
        self.coarse.add(coarse, zeros_like(coarse[..., :1]))

    def _select(self, queries: Value) -> Value | None:
        if self._source is not None:
            onehot = self._board.selections[self._source]
        else:
            onehot = self._hierarchical(queries)
        self._board.selections[self._index] = onehot
        if self._trace is not None and onehot is not None:
            self._trace.append((self._index, onehot))
        return onehot

    def _hierarchical(self, queries: Value) -> Value | None:
        c1 = self.coarse.count
        if c1 == 0:
            return None
        p, ops = self.params, self.ops
        ratio = p.coarse // p.fine
        k2 = self.fine_budget()
        k1 = min(c1, max(math.ceil(k2 / ratio), math.floor(p.ratio1 * c1)))
        total = queries.sum(dim=1, keepdim=True)
        query = ops.cat([total * (p.alpha * SCORE_SCALE), total * ((1 - p.alpha) * SCORE_SCALE)], dim=-1)
        last = p.keep_last and min(c1, k1) >= 2
        coarse_pick = ops.topk_onehot(self.coarse.scores(query) + _forced(c1, last), k1,
                                       SCORE_SPREAD, p.resolution)  # (n_kv, k1, c1)
        n_kv = coarse_pick.shape[0]
        # Every fine cluster is scored at the query's cost (a fixed-operand product); the kept coarse
        # clusters' children's scores are then picked by the coarse one-hot, whose size is k1 x c1 and
        # which is opened once for this product and the fine one-hot's.
        coarse = ops.operand(coarse_pick.transpose(1, 2))
        fine_scores = self.fine.scores(query).reshape(n_kv, c1, ratio)
        # row i r + c: child c of pick i
        child_scores = coarse.rmatmul(fine_scores.transpose(1, 2)).transpose(1, 2).reshape(n_kv, k1 * ratio)
        # The first coarse cluster ranks first and the last second, so the forced children are child
        # row 0 and, for the last cluster, its last child (row 2 r - 1).
        bonus = torch.zeros(k1 * ratio)
        bonus[0] = FIRST_CLUSTER_BONUS
        if last and k2 >= 2:
            bonus[2 * ratio - 1] = FIRST_CLUSTER_BONUS / 2
        child_pick = ops.topk_onehot(child_scores + bonus, k2, SCORE_SPREAD, p.resolution)  # (n_kv, k2, k1 r)
        fine = _fine_onehot(child_pick, coarse, c1, ratio)
        coarse.release()
        return fine


def _forced(n: int, last: bool) -> torch.Tensor:
    """Public bonuses that rank the first cluster first and, with ``last``, the last one second."""
    bonus = torch.zeros(n)
    bonus[0] = FIRST_CLUSTER_BONUS
    if last:
        bonus[-1] = FIRST_CLUSTER_BONUS / 2
    return bonus


def _fine_onehot(child_pick: Value, coarse: Operand, c1: int, ratio: int) -> Value:
    """Child rows ``(n_kv, k2, k1 r)`` and the coarse rows ``(n_kv, k1, C1)`` (transposed, as an
    operand) -> fine one-hot rows ``(n_kv, k2, C1 r)``: child c of pick i is fine cluster ``g r + c``
    where g is pick i's coarse cluster. One product for all c, exact (one-hot times one-hot)."""
    n_kv, k2, children = child_pick.shape
    k1 = children // ratio
    by_child = child_pick.reshape(n_kv, k2, k1, ratio).permute(0, 3, 1, 2).reshape(n_kv, ratio * k2, k1)
    fine = coarse.rmatmul(by_child, transposed=True).reshape(n_kv, ratio, k2, c1)
    return fine.permute(0, 2, 3, 1).reshape(n_kv, k2, c1 * ratio)


class MPCachePolicy(KVPolicy):
    name = "mpcache"

    def __init__(self, budget: float, params: MPCacheParams | None = None) -> None:
        super().__init__(budget)
        self.params = params or MPCacheParams()
        self.trace: list[tuple[int, Value]] | None = None

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        geometry = Geometry.of(config)
        board = _Board({}, {})
        p = self.params
        return [MPCacheLayer(ops, geometry, self.budget, p, i,
                             sharing_source(i, config.n_layers, p.own_first, p.own_last), board, self.trace)
                for i in range(config.n_layers)]
