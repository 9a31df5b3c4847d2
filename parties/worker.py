"""A party's side of private generation: load a model's weight shares once, then serve generations.

A party process keeps the loaded model (its weight shares, already opened against their masks) for
as long as it lives, so later sessions pay only for their own prompt and tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from pinfer.model.decoder import Decoder
from pinfer.model.generation import greedy_loop
from pinfer.model.config import ModelConfig
from pinfer.model.norm_plan import NormShifts
from pinfer.protocols import crypten_compat  # noqa: F401
from crypten.mpc import MPCTensor
from pinfer.protocols.costs import Cost
from pinfer.protocols.fixed_operand import FRACTIONAL_BITS
from pinfer.protocols.mpc_ops import MpcOps
from pinfer.protocols.sharing import ShareBundle
from pinfer.protocols.world import PartyContext

_LOADED: dict[str, tuple[ModelConfig, MpcOps]] = {}


def load_model_shares(
    ctx: PartyContext, model_key: str, config: ModelConfig, norm_shifts: NormShifts, weights: ShareBundle
) -> dict[str, Any]:
    """Register this party's weight shares (one opening of every matrix's mask) under ``model_key``."""
    _LOADED[model_key] = (config, MpcOps(ctx.provider, ctx.costs, weights, norm_shifts))
    return {"costs": ctx.costs.report()}


@dataclass(frozen=True)
class TokenShareStep:
    """One generated token as this party holds it: its share of ``id * scale`` and the step's cost."""

    step: int
    phase: str
    id_share: int
    scale: int
    cost: Cost


def stream_on_shares(
    ctx: PartyContext, model_key: str, max_new_tokens: int, prompt: ShareBundle, on_token: Callable[[TokenShareStep], None]
) -> dict[str, list[float]]:
    """Run greedy generation on shares, handing each new token's id share to ``on_token`` at once.

    A token id share is the one-hot share dotted with the public index vector, so it is a share of
    ``id * scale`` for the one-hot row's encoding scale; the client adds the parties' shares and
    divides. Nothing here is ever opened. Returns the wall seconds of every prefill/decode step.
    """
    config, ops = _LOADED[model_key]
    ops.use_costs(ctx.costs)
    decoder = Decoder(config, ops)
    index = torch.arange(config.vocab_size, dtype=torch.int64)
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


def generate_on_shares(ctx: PartyContext, model_key: str, max_new_tokens: int, prompt: ShareBundle) -> dict[str, Any]:
    """Run greedy generation on shares; return this party's shares of the new token ids and its costs."""
    steps: list[TokenShareStep] = []
    step_seconds = stream_on_shares(ctx, model_key, max_new_tokens, prompt, steps.append)
    return {
        "token_id_shares": torch.tensor([s.id_share for s in steps], dtype=torch.int64),
        "token_id_scales": torch.tensor([s.scale for s in steps], dtype=torch.float64),
        "costs": ctx.costs.report(),
        "step_seconds": step_seconds,
    }
