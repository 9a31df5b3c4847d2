"""The KV policies a deployment serves, as public request parameters: a name and a budget.

Why one table: the orchestrator lists it (``ModelInfo.kv_policies``) and validates requests against it,
and every party resolves a request's policy with :func:`resolve` before it builds its decoder, so the
defaults a request leaves out (an empty name, a zero budget) mean the same thing at every node. The
client seals the policy and budget to each party with its share (:mod:`pinfer.keys.session`), so the
parties run exactly what the client asked for, or refuse.

The default is the full cache: ``docs/kvcache.md`` measures no break-even prompt length for MPCache.
Its token latency against the full cache on shares (full / MPCache, 10% budget, SmolLM2) is 1.22,
1.25, 0.88, 1.14 and 0.84 at 256 to 4,096 cached tokens, and 0.78 to 1.26 at 2,048 over loopback, LAN
and WAN: no length beyond which it is consistently faster. It always sends fewer bytes (1.44x at 256
tokens), but it changes the output, which a default must not do without being asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import POLICIES, make_policy
from .base import KVPolicy


class KVRequestError(ValueError):
    """A request's KV policy or budget is not one this deployment serves (the message names public values only)."""


@dataclass(frozen=True)
class ServedPolicy:
    """One policy a request may name, with the budget a request that gives none gets."""

    name: str
    default_budget: float
    description: str


SERVED: tuple[ServedPolicy, ...] = (
    ServedPolicy("full", 1.0, "every token attended at every step"),
    ServedPolicy("streamingllm", 0.1, "StreamingLLM: 4 attention sinks plus the most recent tokens (public positions)"),
    ServedPolicy("h2o", 0.1, "H2O: half recent tokens, half heavy hitters by accumulated attention"),
    ServedPolicy("snapkv", 0.1, "SnapKV: an observation window plus the prompt tokens it votes for, once after the prompt"),
    ServedPolicy("tova", 0.1, "TOVA: evicts the token the last query attends to least"),
    ServedPolicy("quest", 0.1, "Quest: top pages of 16 tokens by an attention bound per step; first 2 layers dense"),
    ServedPolicy("mpcache", 0.1, "MPCache: hierarchical cluster selection per step (coarse 32, fine 8 tokens)"),
)
assert {p.name for p in SERVED} == set(POLICIES), "every policy is served, under its registry name"

DEFAULT_POLICY = "full"
"""The policy of a request that names none."""

_BY_NAME = {p.name: p for p in SERVED}
_SHOWN_NAME_CHARS = 40


@dataclass(frozen=True)
class KVChoice:
    """A resolved request: the policy by name and the kept fraction of the prompt, in (0, 1]."""

    policy: str
    budget: float

    def build(self) -> KVPolicy:
        return make_policy(self.policy, self.budget)


def resolve(policy: str = "", budget: float = 0.0) -> KVChoice:
    """The policy a request names (empty: :data:`DEFAULT_POLICY`) with its budget (0: the policy's default).

    Raises :class:`KVRequestError` for a policy not served, a budget outside (0, 1], or a budget other
    than 1 for the full cache (which keeps every token).
    """
    name = policy or DEFAULT_POLICY
    served = _BY_NAME.get(name)
    if served is None:
        shown = name[:_SHOWN_NAME_CHARS] + ("..." if len(name) > _SHOWN_NAME_CHARS else "")
        raise KVRequestError(f"unknown KV policy {shown!r}; served: {', '.join(_BY_NAME)}")
    if budget == 0.0:
        return KVChoice(name, served.default_budget)
    if not (math.isfinite(budget) and 0.0 < budget <= 1.0):
        raise KVRequestError(f"kv_budget must be a fraction of the prompt in (0, 1] (0: the policy's default of "
                             f"{served.default_budget}), not {budget}")
    if name == "full" and budget != 1.0:
        raise KVRequestError("the full KV cache keeps every token: its kv_budget is 1 (or 0, the default)")
    return KVChoice(name, budget)
