"""One prefill shared by several caches, for the plaintext accuracy harness.

Every policy attends in full to the prompt and decides what to keep only once it has seen the
prompt's attention, so a grid of policies and budgets needs one prefill, not one per entry: a
:class:`FanOutLayer` hands the prompt's keys and values to each member, computes the attention with
the first member alone, and gives the attention weights to each member's ``end_prompt``. After the
prefill each member cache decodes on its own.
"""

from __future__ import annotations

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps, Value

from .base import KVPolicy, PromptObserver


class FanOutLayer:
    def __init__(self, members: list[KVLayer]) -> None:
        self.members = members

    @property
    def length(self) -> int:
        return self.members[0].length

    def append(self, keys: Value, values: Value) -> None:
        for member in self.members:
            member.append(keys, values)

    def scores(self, queries: Value) -> Value:
        return self.members[0].scores(queries)

    def mix(self, weights: Value) -> Value:
        out = self.members[0].mix(weights)  # ends the first member's prompt itself
        for member in self.members[1:]:
            if isinstance(member, PromptObserver):
                member.end_prompt(weights)
        return out

    def release(self) -> None:
        for member in self.members:
            member.release()


def fan_out(config: ModelConfig, ops: TensorOps, policies: list[KVPolicy | None]) -> tuple[list[KVLayer], list[list[KVLayer]]]:
    """A cache to prefill through, and the per-policy caches (None: the backend's full cache) it feeds."""
    caches = [[ops.new_kv_layer() for _ in range(config.n_layers)] if policy is None else policy.new_cache(config, ops)
              for policy in policies]
    return [FanOutLayer([cache[i] for cache in caches]) for i in range(config.n_layers)], caches
