"""A fixed-budget cache with oblivious eviction: the shared mechanism of H2O and TOVA.

The cache holds ``budget`` slots: a "heavy" part, whose members are secret, and (for H2O) a public
window of the most recent tokens. Attention is invariant to the order of cached tokens (keys are
stored after RoPE), so evicting a token means overwriting its slot: with ``e`` the secret one-hot of
the loser among the candidates, each slot becomes ``slot + e * (candidate - slot)``. The loser is
found by an arg-max on the negated scores, so on shares nobody learns which token left; the work per
step grows with the budget, not with the sequence. The slots are plain values (not the backend's
fixed operand), since they change every step.
"""

from __future__ import annotations

from pinfer.model.tensor_ops import TensorOps, Value

from .base import Geometry, budget_tokens, per_head, zeros_like


class SlotLayer:
    """``recent`` is the public recent window's share of the budget (0 for TOVA); ``accumulate`` adds
    each step's attention to a token's score (H2O) instead of replacing it (TOVA); ``shared_heads``
    ranks tokens by the attention averaged over all heads, one selection for the whole layer (TOVA)."""

    def __init__(self, ops: TensorOps, geometry: Geometry, budget: float, recent: float,
                 accumulate: bool, shared_heads: bool) -> None:
        self._ops = ops
        self._geometry = geometry
        self._fraction = budget
        self._recent_fraction = recent
        self._accumulate = accumulate
        self._shared_heads = shared_heads
        self._keys: Value | None = None
        self._values: Value | None = None
        self._scores: Value | None = None  # (heads, n, 1) with heads = 1 when shared
        self._budget = 0
        self._recent = 0
        self._heavy = 0  # slots [0, heavy) are heavy hitters, [heavy, n) the recent window (in order)

    @property
    def length(self) -> int:
        return 0 if self._keys is None else self._keys.shape[1]

    def append(self, keys: Value, values: Value) -> None:
        if self._keys is None:
            self._budget = budget_tokens(self._fraction, keys.shape[1], floor=2)
            self._recent = round(self._recent_fraction * self._budget)
            self._keys, self._values = keys, values
        else:
            if keys.shape[1] != 1:
                raise ValueError("after the prompt, tokens are appended one at a time")
            self._keys = self._ops.cat([self._keys, keys], dim=1)
            self._values = self._ops.cat([self._values, values], dim=1)

    def scores(self, queries: Value) -> Value:
        return queries.matmul(self._keys.transpose(1, 2))

    def mix(self, weights: Value) -> Value:
        out = weights.matmul(self._values)
        if self._scores is None:
            self.end_prompt(weights)
            return out
        with self._ops.section("kv-select"):
            attention = self._attention_received(weights)
            if self._accumulate:
                attention = attention + self._ops.cat([self._scores, zeros_like(attention[:, -1:])], dim=1)
            self._scores = attention
            self._admit_oldest_recent()
        return out

    def end_prompt(self, weights: Value) -> None:
        with self._ops.section("kv-select"):
            self._keep_prompt(self._attention_received(weights))

    def release(self) -> None:
        self._keys = self._values = self._scores = None

    def _attention_received(self, weights: Value) -> Value:
        """Per key: the attention it received this forward, summed over query rows (and heads)."""
        received = per_head(weights, self._geometry.group)
        if not self._accumulate:
            received = received[:, :, -1:, :]
        received = received.sum(dim=2).sum(dim=1)  # (n_kv, L)
        if self._shared_heads:
            received = received.sum(dim=0, keepdim=True)
        return received.unsqueeze(-1)

    def _keep_prompt(self, scores: Value) -> None:
        """After the prompt: the recent window plus the top-scoring older tokens, up to the budget."""
        n = self.length
        older = n - min(self._recent, n)
        heavy_budget = self._budget - self._recent
        if older <= heavy_budget:
            self._heavy, self._scores = older, scores
            return
        pick = self._ops.topk_onehot(scores[:, :older, 0], heavy_budget)  # (heads, hb, older)
        kept = [pick.matmul(x[:, :older]) for x in (self._keys, self._values, scores)]
        self._keys, self._values, self._scores = (
            self._ops.cat([k, x[:, older:]], dim=1) for k, x in zip(kept, (self._keys, self._values, scores))
        )
        self._heavy = heavy_budget

    def _admit_oldest_recent(self) -> None:
        """The oldest token of an over-full recent window joins the heavy slots, or replaces their
        lowest-scoring member (itself included) once they are full."""
        n = self.length
        if n - self._heavy <= self._recent:
            return
        h = self._heavy
        if h < self._budget - self._recent:
            self._heavy += 1
            return
        loser = self._ops.argmax_onehot(-self._scores[:, : h + 1, 0])[:, :h].unsqueeze(-1)  # (heads, h, 1)
        fields = [self._keys, self._values, self._scores]
        updated = []
        for x in fields:
            slots, candidate = x[:, :h], x[:, h : h + 1]
            slots = slots + loser * (candidate - slots)
            updated.append(self._ops.cat([slots, x[:, h + 1 :]], dim=1) if h + 1 < n else slots)
        self._keys, self._values, self._scores = updated
