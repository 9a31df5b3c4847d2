"""What every KV policy shares: the attention geometry, budgets, and small backend-neutral helpers.

A policy is written once against :mod:`pinfer.model.tensor_ops`: its per-layer caches implement
:class:`~pinfer.model.tensor_ops.KVLayer` and use only torch-style arithmetic on values plus the backend's
ops, so the same code evicts and selects tokens in plaintext (the accuracy reference) and on shares
(where every selection is a secret one-hot and every gather a product). Budgets, counts and cluster
sizes are public; which tokens win is not.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps, Value

EVICTED_PENALTY = 32.0
"""Added (negated) to the score of a token a policy evicted by a secret mask rather than by removal.
Beyond the MPC softmax's exp cut-off of 16, so the token's weight is exactly 0 on shares and
e^-32 ~ 1e-14 in plaintext."""


SCORE_SCALE = 0.125
"""Cluster scores are ranked at 1/8 of ``q . summary``: the ordering is the same, and the spread of
scores on SmolLM2 (|score| <= 1.7e3 measured at 1k-2k tokens, about 210 once scaled) stays far
inside ``SCORE_SPREAD`` with the forced clusters' bonus on top."""

SCORE_SPREAD = 2.0**12
"""Public bound on max - min of any row a policy ranks with ``topk_onehot``: scaled cluster scores
(measured range about 425) plus a bonus of at most 2048 for forced clusters stay below 2.5e3."""


@dataclass(frozen=True)
class Geometry:
    """The cache layout the decoder hands a layer: ``n_kv`` heads, ``group`` query rows per head."""

    n_layers: int
    n_kv: int
    group: int
    head_dim: int

    @staticmethod
    def of(config: ModelConfig) -> Geometry:
        return Geometry(config.n_layers, config.n_kv_heads, config.n_heads // config.n_kv_heads, config.head_dim)


def budget_tokens(fraction: float, prompt_len: int, floor: int = 1) -> int:
    """The public token budget for a prompt: ``ceil(fraction * prompt_len)``, at least ``floor``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"budget fraction {fraction} must lie in (0, 1]")
    return max(floor, math.ceil(fraction * prompt_len))


def per_head(weights: Value, group: int) -> Value:
    """Attention weights ``(n_kv, group * rows, L)`` as ``(n_kv, group, rows, L)`` (decoder row order)."""
    n_kv, stacked, length = weights.shape
    return weights.reshape(n_kv, group, stacked // group, length)


def zeros_like(x: Value) -> Value:
    """An exact zero of ``x``'s shape and backend (on shares each party's share cancels locally)."""
    return x - x


def release(layer: KVLayer | None) -> None:
    if layer is not None:
        layer.release()


@runtime_checkable
class PromptObserver(Protocol):
    """A policy layer that decides what to keep once it has seen the prompt's attention weights.

    ``mix`` calls ``end_prompt`` itself after the prompt's attention; the accuracy harness calls it
    directly to let several policies share one prefill (every policy attends in full to the prompt).
    """

    def end_prompt(self, weights: Value) -> None: ...


class KVPolicy(ABC):
    """Builds one cache layer per decoder layer; ``budget`` is the kept fraction of the prompt."""

    name: str

    def __init__(self, budget: float) -> None:
        budget_tokens(budget, 1)  # validates the fraction
        self.budget = budget

    @abstractmethod
    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]:
        """Fresh per-layer caches for one sequence."""
