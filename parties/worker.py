"""A party's side of private generation: load a model's weight shares once, then serve generations.

:func:`load_model_shares` opens the weight shares against their masks once and returns the
:class:`PartyModel`; the caller keeps it and hands it to every generation, so later generations pay
only for their own prompt and tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from pinfer.model.decoder import Decoder, KVCachePolicy
from pinfer.model.generation import greedy_loop
from pinfer.model.config import ModelConfig
from pinfer.model.norm_plan import NormShifts
from pinfer.protocols import crypten_compat  # noqa: F401
from crypten.mpc import MPCTensor
from pinfer.protocols.costs import Cost
from pinfer.protocols.mpc_ops import MpcOps
from pinfer.protocols.sharing import FRACTIONAL_BITS, ShareBundle
from pinfer.protocols.world import PartyContext

@dataclass(frozen=True)
class PartyModel:
    """A model as one party holds it: the public config and the party's opened weight operands."""

    config: ModelConfig
    ops: MpcOps


def load_model_shares(ctx: PartyContext, config: ModelConfig, norm_shifts: NormShifts, weights: ShareBundle) -> PartyModel:
    """This party's model from its weight shares (one opening of every matrix's mask)."""
    return PartyModel(config, MpcOps(ctx.provider, ctx.costs, weights, norm_shifts))


@dataclass(frozen=True)
class TokenShareStep:
    """One generated token as this party holds it: its share of ``id * scale`` and the step's cost."""

    step: int
    phase: str
    id_share: int
    scale: int
    cost: Cost


def stream_on_shares(
    ctx: PartyContext, model: PartyModel, max_new_tokens: int, prompt: ShareBundle,
    on_token: Callable[[TokenShareStep], None], kv_policy: KVCachePolicy | None = None,
) -> dict[str, list[float]]:
    """Run greedy generation on shares, handing each new token's id share to ``on_token`` at once.

    ``kv_policy`` (:mod:`pinfer.kvcache`; None: the full cache) must be the same at every party.

    A token id share is the one-hot share dotted with the public index vector, so it is a share of
    ``id * scale`` for the one-hot row's encoding scale; the client adds the parties' shares and
    divides. Nothing here is ever opened. Returns the wall seconds of every prefill/decode step.
    """
    model.ops.use_costs(ctx.costs)
    decoder = Decoder(model.config, model.ops, kv_policy)
    index = torch.arange(model.config.vocab_size, dtype=torch.int64)
    step_seconds: dict[str, list[float]] = {"prefill": [], "decode": []}
    last: list[tuple[str, Cost]] = []

    def emit(row: MPCTensor) -> None:
        name, cost = last.pop()
        share = int(row.share[0] @ index)
        on_token(TokenShareStep(len(step_seconds["prefill"]) + len(step_seconds["decode"]) - 1, name, share,
                                int(row.encoder.scale), cost))

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        before = ctx.costs.reading()
        with ctx.costs.in_phase(name):
            yield
        cost = ctx.costs.reading().minus(before)
        step_seconds[name].append(cost.seconds)
        last.append((name, cost))

    tokens = MPCTensor.from_shares(prompt.expand()["tokens"], precision=FRACTIONAL_BITS)
    cache = greedy_loop(decoder, tokens, max_new_tokens, emit=emit, phase=phase)
    for layer in cache:
        layer.release()
    return step_seconds


def generate_on_shares(ctx: PartyContext, model: PartyModel, max_new_tokens: int, prompt: ShareBundle,
                       kv_policy: KVCachePolicy | None = None) -> dict[str, Any]:
    """Run greedy generation on shares; return this party's shares of the new token ids and its costs."""
    steps: list[TokenShareStep] = []
    step_seconds = stream_on_shares(ctx, model, max_new_tokens, prompt, steps.append, kv_policy)
    return {
        "token_id_shares": torch.tensor([s.id_share for s in steps], dtype=torch.int64),
        "token_id_scales": torch.tensor([s.scale for s in steps], dtype=torch.float64),
        "costs": ctx.costs.report(),
        "step_seconds": step_seconds,
    }
