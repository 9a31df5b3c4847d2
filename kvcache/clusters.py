"""Contiguous clusters of cached tokens, summarised by per-channel key extremes, and the cache layer
that attends only to selected clusters (the shared mechanism of Quest and MPCache).

A cluster's summary is its keys' per-channel maximum and minimum, ``[max | min]``, computed once when
the cluster is complete. Completed clusters live in a backend cache layer whose *keys* are the
summaries and whose *values* are the clusters' keep bits, and their tokens in a second backend layer.
So on shares every product with cached data has a fixed operand: ``scores(query)`` scores every
cluster at the cost of the query's size, and attention over a secret one-hot selection of clusters
takes the query's scores against every cached token (again the query's size), picks the selected
clusters' scores by a product with the one-hot, and routes the attention weights back through the
one-hot onto the tokens: what is opened grows with the number of clusters and the query heads, never
with the gathered keys and values. The one-hot is a backend operand (``TensorOps.operand``) for both
products, so on shares it is opened once per step. Tokens of the newest, incomplete cluster (the
"tail") are always attended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pinfer.model.tensor_ops import Operand, TensorOps, Value

from .base import EVICTED_PENALTY, Geometry, budget_tokens, zeros_like


def selections(trace: list[tuple[int, torch.Tensor]]) -> dict[tuple[int, int, int], frozenset[int]]:
    """A policy's recorded selections (``trace``: layer and one-hot ``(n_kv, k, C)`` per decode step,
    opened by whoever holds them) as the selected cluster indices by (layer, KV head, step)."""
    steps: dict[int, int] = {}
    out = {}
    for layer, onehot in trace:
        step = steps.get(layer, 0)
        steps[layer] = step + 1
        for head in range(onehot.shape[0]):
            out[(layer, head, step)] = frozenset(onehot[head].argmax(dim=-1).tolist())
    return out


def extremes(ops: TensorOps, x: Value) -> tuple[Value, Value]:
    """Max and min over the last dim through the backend's arg-max (a comparison tournament on shares)."""
    both = ops.cat([x.unsqueeze(0), (-x).unsqueeze(0)], dim=0)
    best = (ops.argmax_onehot(both) * both).sum(dim=-1)
    return best[0], -best[1]


def summarise(ops: TensorOps, keys: Value, size: int) -> Value:
    """``(n_kv, c * size, hd)`` keys -> ``(n_kv, c, 2 hd)`` per-cluster ``[max | min]`` per channel."""
    n_kv, n, hd = keys.shape
    blocks = keys.reshape(n_kv, n // size, size, hd).transpose(2, 3)
    top, bottom = extremes(ops, blocks)
    return ops.cat([top, bottom], dim=-1)


def stack(ops: TensorOps, values: list[Value], dim: int) -> Value:
    return ops.cat([v.unsqueeze(dim) for v in values], dim=dim)


class ClusterStore:
    """Completed clusters: summaries as a backend layer's keys, payloads as its values."""

    def __init__(self, ops: TensorOps) -> None:
        self._layer = ops.new_kv_layer()

    @property
    def count(self) -> int:
        return self._layer.length

    def add(self, summaries: Value, payload: Value) -> None:
        self._layer.append(summaries, payload)

    def scores(self, query: Value) -> Value:
        """``(n_kv, 1, w)`` query against ``(n_kv, C, w)`` summaries -> ``(n_kv, C)``."""
        return self._layer.scores(query)[:, 0, :]

    def gather(self, onehot: Value) -> Value:
        """``(n_kv, k, C)`` one-hot rows -> ``(n_kv, k, payload)``."""
        return self._layer.mix(onehot)

    def release(self) -> None:
        self._layer.release()


class ClusteredLayer(ABC):
    """A layer that attends to selected fine clusters plus the tail, under a public token budget.

    The prompt is attended in full; when its attention is known the subclass decides each prompt
    token's keep bit (a secret 0/1: an evicted token stays in its cluster but its score is pushed
    below the softmax's reach) or that every token stays (public: then no keep bit is gathered), and
    complete blocks of ``block`` tokens move into the stores. During
    decoding, ``_select`` returns a one-hot ``(n_kv, k, C)`` over fine clusters each step.
    """

    def __init__(self, ops: TensorOps, geometry: Geometry, budget: float, block: int, fine: int) -> None:
        if block % fine:
            raise ValueError(f"block {block} must be a multiple of the fine cluster size {fine}")
        self.ops = ops
        self.geometry = geometry
        self.fine_size = fine
        self.block = block
        self.fine = ClusterStore(ops)
        self._tokens = ops.new_kv_layer()  # the tokens of complete clusters, in cluster order
        self.budget = 0
        self._fraction = budget
        self._prompt_layer = ops.new_kv_layer()
        self._prompt: tuple[Value, Value] | None = None
        self._tail: tuple[Value, Value, Value] | None = None  # keys, values, keep (n_kv, t, 1)
        self._selection: tuple[Operand, int] | None = None  # this step's one-hot (n_kv, k, C) transposed, and k
        self._evicts = False  # whether any prompt token may have a 0 keep bit (public)
        self._length = 0
        self.decoding = False

    @property
    def length(self) -> int:
        return self._length if self.decoding else self._prompt_layer.length

    @property
    def tail_length(self) -> int:
        return 0 if self._tail is None else self._tail[0].shape[1]

    def append(self, keys: Value, values: Value) -> None:
        if not self.decoding:
            if self._prompt is not None:
                raise ValueError("the prompt must arrive in one piece")
            self._prompt = (keys, values)
            self.budget = budget_tokens(self._fraction, keys.shape[1], floor=self.fine_size)
            self._prompt_layer.append(keys, values)
            return
        if keys.shape[1] != 1:
            raise ValueError("after the prompt, tokens are appended one at a time")
        keep = zeros_like(keys[..., :1]) + 1.0
        self._extend_tail(keys, values, keep)

    def scores(self, queries: Value) -> Value:
        if not self.decoding:
            return self._prompt_layer.scores(queries)
        parts, keeps = [], []
        self._release_selection()
        with self.ops.section("kv-select"):
            onehot = self._select(queries)
            if onehot is not None:
                self._selection = (self.ops.operand(onehot.transpose(1, 2)), onehot.shape[1])
                parts.append(self._selected_scores(queries))
                if self._evicts:
                    keeps.append(self.fine.gather(onehot).reshape(onehot.shape[0], 1, -1))
        if self._tail is not None:
            tail_keys, _, tail_keep = self._tail
            parts.append(queries.matmul(tail_keys.transpose(1, 2)))
            keeps.append(tail_keep.transpose(1, 2))
        scores = self.ops.cat(parts, dim=-1)
        self._length = scores.shape[-1]
        if not self._evicts:
            return scores
        return scores + (self.ops.cat(keeps, dim=-1) - 1.0) * EVICTED_PENALTY

    def _selected_scores(self, queries: Value) -> Value:
        """Scores ``(n_kv, G, k s)`` of the selected clusters' tokens: every cached token's score (a
        fixed-operand product), then the selected clusters' rows picked by the one-hot."""
        n_kv, rows, _ = queries.shape
        selection, k = self._selection
        clusters, size = self.fine.count, self.fine_size
        every = self._tokens.scores(queries).reshape(n_kv, rows, clusters, size)
        # (onehot @ scores per cluster)^T, with the token's position inside its cluster kept apart
        picked = selection.rmatmul(every.permute(0, 1, 3, 2).reshape(n_kv, rows * size, clusters))
        return picked.reshape(n_kv, rows, size, k).permute(0, 1, 3, 2).reshape(n_kv, rows, k * size)

    def mix(self, weights: Value) -> Value:
        if not self.decoding:
            out = self._prompt_layer.mix(weights)
            self.end_prompt(weights)
            return out
        n_kv, rows, _ = weights.shape
        tail = self.tail_length
        out = None
        if self._selection is not None:
            selection, k = self._selection
            clusters, size = self.fine.count, self.fine_size
            picked = weights[..., : k * size].reshape(n_kv, rows, k, size).permute(0, 1, 3, 2)
            with self.ops.section("kv-select"):
                # The weights routed back through the one-hot onto every cached token.
                spread = selection.rmatmul(picked.reshape(n_kv, rows * size, k), transposed=True)
                self._release_selection()
            routed = spread.reshape(n_kv, rows, size, clusters).permute(0, 1, 3, 2).reshape(n_kv, rows, clusters * size)
            out = self._tokens.mix(routed)
        if tail:
            _, tail_values, _ = self._tail
            from_tail = weights[..., weights.shape[-1] - tail :].matmul(tail_values)
            out = from_tail if out is None else out + from_tail
        return out

    def end_prompt(self, weights: Value) -> None:
        keys, values = self._prompt
        with self.ops.section("kv-select"):
            keep = self._prompt_keep(weights)
        self._evicts = keep is not None
        if keep is None:
            keep = zeros_like(keys[..., :1]) + 1.0
        self._extend_tail(keys, values, keep)
        self._prompt = None
        self._prompt_layer.release()
        self.decoding = True

    def release(self) -> None:
        self._release_selection()
        self.fine.release()
        self._tokens.release()

    def _release_selection(self) -> None:
        if self._selection is not None:
            self._selection[0].release()
            self._selection = None

    def _extend_tail(self, keys: Value, values: Value, keep: Value) -> None:
        """Add tokens to the tail and move its complete blocks into the stores."""
        if self._tail is not None:
            keys, values, keep = (self.ops.cat([t, x], dim=1) for t, x in zip(self._tail, (keys, values, keep)))
        complete = keys.shape[1] // self.block * self.block
        if complete:
            with self.ops.section("kv-select"):
                self._add_blocks(keys[:, :complete], values[:, :complete], keep[:, :complete])
        n = keys.shape[1]
        self._tail = None if complete == n else (keys[:, complete:], values[:, complete:], keep[:, complete:])

    def _add_blocks(self, keys: Value, values: Value, keep: Value) -> None:
        n_kv, n, hd = keys.shape
        count, size = n // self.fine_size, self.fine_size
        summaries = summarise(self.ops, keys, size)
        self.fine.add(summaries, keep.reshape(n_kv, count, size))
        self._tokens.append(keys, values)
        self._on_fine_clusters(summaries)

    def fine_budget(self) -> int:
        """Fine clusters to select this step: what the budget leaves after the tail, at least one."""
        return min(self.fine.count, max(1, (self.budget - self.tail_length) // self.fine_size))

    def _on_fine_clusters(self, summaries: Value) -> None:
        """Hook for stores above the fine level (coarse clusters)."""

    @abstractmethod
    def _prompt_keep(self, weights: Value) -> Value | None:
        """Keep bits ``(n_kv, T, 1)`` for the prompt's tokens from its attention weights, or None when
        the policy keeps every prompt token (a public fact)."""

    @abstractmethod
    def _select(self, queries: Value) -> Value | None:
        """One-hot ``(n_kv, k, C)`` over fine clusters for this step, or None when there are none."""
