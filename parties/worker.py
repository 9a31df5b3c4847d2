"""A party's side of private generation: load a model's weight shares once, then serve generations.

A party process keeps the loaded model (its weight shares, already opened against their masks) for
as long as it lives, so later sessions pay only for their own prompt and tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pinfer.decoder import Decoder
from pinfer.generation import greedy_loop
from pinfer.models.config import ModelConfig
from pinfer.norm_plan import NormShifts
from pinfer.protocols import crypten_compat  # noqa: F401
from crypten.mpc import MPCTensor
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


def generate_on_shares(ctx: PartyContext, model_key: str, max_new_tokens: int, prompt: ShareBundle) -> dict[str, Any]:
    """Run greedy generation on shares; return this party's shares of the new token ids and its costs.

    A token id share is the one-hot share dotted with the public index vector, so it is a share of
    ``id * scale`` for the one-hot row's encoding scale; the client adds the parties' shares and
    divides. Nothing here is ever opened.
    """
    config, ops = _LOADED[model_key]
    ops.use_costs(ctx.costs)
    decoder = Decoder(config, ops)
    index = torch.arange(config.vocab_size, dtype=torch.int64)
    id_shares: list[torch.Tensor] = []
    id_scales: list[int] = []
    step_seconds: dict[str, list[float]] = {"prefill": [], "decode": []}

    def emit(row: MPCTensor) -> None:
        id_shares.append(row.share[0] @ index)
        id_scales.append(int(row.encoder.scale))

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        started = time.perf_counter()
        with ctx.costs.in_phase(name):
            yield
        step_seconds[name].append(time.perf_counter() - started)

    tokens = MPCTensor.from_shares(prompt.expand()["tokens"], precision=FRACTIONAL_BITS)
    cache = greedy_loop(decoder, tokens, max_new_tokens, emit=emit, phase=phase)
    for layer in cache:
        layer.release()
    return {
        "token_id_shares": torch.stack(id_shares),
        "token_id_scales": torch.tensor(id_scales, dtype=torch.float64),
        "costs": ctx.costs.report(),
        "step_seconds": step_seconds,
    }
