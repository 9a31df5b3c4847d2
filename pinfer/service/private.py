"""Private generation on local processes: this process is the client and the model owner.

It shares the prepared weights once, launches the parties and the dealer, sends each prompt as the
service's client does (:mod:`pinfer.protocols.token_input`: DPF keys for two parties, one-hot shares
for three) and reconstructs only the new token ids from the parties' shares.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from pinfer.model.config import ModelConfig
from pinfer.model.decoder import KVCachePolicy, prepare_weights
from pinfer.model.generation import check_request
from pinfer.model.norm_plan import NormShifts
from pinfer.parties.worker import generate_on_shares, load_model_shares
from pinfer.protocols import token_input
from pinfer.protocols.sharing import ShareBundle, share
from pinfer.protocols.world import LocalWorld, PartyContext

_KEPT_MODEL = "model"
"""Under which name each party process keeps the shared model between this module's jobs."""


@dataclass
class PrivateGeneration:
    tokens: list[int]
    wall_seconds: float
    prefill_seconds: float
    decode_seconds_per_token: float | None
    party_costs: list[dict[str, Any]]

    def phase_totals(self, phase: str) -> list[dict[str, int]]:
        """Bytes, rounds and dealer bytes of ``phase`` for each party."""
        totals = []
        for costs in self.party_costs:
            ops = costs.get(phase, {})
            totals.append({key: sum(op[key] for op in ops.values()) for key in ("bytes", "rounds", "dealer_bytes")})
        return totals


class PrivateModel:
    """A model shared across local parties; serves any number of private generations."""

    def __init__(
        self, config: ModelConfig, weights: dict[str, torch.Tensor], norm_shifts: NormShifts, n_parties: int = 2
    ) -> None:
        self.config = config
        self.n_parties = n_parties
        started = time.perf_counter()
        self._world = LocalWorld(n_parties)
        try:
            bundles = share(prepare_weights(config, weights), n_parties)
            results = self._world.run(_load_model, config, norm_shifts, party_kwargs=[{"weights": b} for b in bundles])
        except BaseException:
            self._world.close()
            raise
        self.setup_seconds = time.perf_counter() - started
        self.setup_costs = [r["costs"] for r in results]

    def __enter__(self) -> PrivateModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._world.close()

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 kv_policy: KVCachePolicy | None = None) -> PrivateGeneration:
        """One generation; ``kv_policy`` (:mod:`pinfer.kvcache`, None: the full cache) runs at every party."""
        check_request(self.config, prompt_ids, max_new_tokens)
        started = time.perf_counter()
        payloads = token_input.share_prompt(prompt_ids, self.config.vocab_size, self.n_parties)
        results = self._world.run(_generate, max_new_tokens, kv_policy, len(prompt_ids),
                                  party_kwargs=[{"payload": p} for p in payloads])
        total = sum(r["token_id_shares"] for r in results)
        tokens = [int(v) for v in torch.round(total.double() / results[0]["token_id_scales"]).long()]
        steps = results[0]["step_seconds"]
        return PrivateGeneration(
            tokens=tokens,
            wall_seconds=time.perf_counter() - started,
            prefill_seconds=steps["prefill"][0],
            decode_seconds_per_token=statistics.median(steps["decode"]) if steps["decode"] else None,
            party_costs=[r["costs"] for r in results],
        )


def _load_model(ctx: PartyContext, config: ModelConfig, norm_shifts: NormShifts, weights: ShareBundle) -> dict[str, Any]:
    """Party job: load the model and keep it in this party's process for the generations that follow."""
    ctx.kept[_KEPT_MODEL] = load_model_shares(ctx, config, norm_shifts, weights)
    return {"costs": ctx.costs.report()}


def _generate(ctx: PartyContext, max_new_tokens: int, kv_policy: KVCachePolicy | None, prompt_tokens: int,
              payload: torch.Tensor) -> dict[str, Any]:
    """Party job: one generation on the model :func:`_load_model` left in this process."""
    model = ctx.kept[_KEPT_MODEL]
    prompt = token_input.open_prompt(ctx.rank, ctx.world_size, payload, prompt_tokens, model.config.vocab_size)
    return generate_on_shares(ctx, model, max_new_tokens, prompt, kv_policy)


def generate_private(
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    prompt_ids: list[int],
    max_new_tokens: int,
    norm_shifts: NormShifts,
    n_parties: int = 2,
    kv_policy: KVCachePolicy | None = None,
) -> PrivateGeneration:
    """One private generation in a fresh local world; its costs include the model's set-up phase."""
    check_request(config, prompt_ids, max_new_tokens)
    with PrivateModel(config, weights, norm_shifts, n_parties) as model:
        result = model.generate(prompt_ids, max_new_tokens, kv_policy)
    result.wall_seconds += model.setup_seconds
    result.party_costs = [{**setup, **run} for setup, run in zip(model.setup_costs, result.party_costs)]
    return result
