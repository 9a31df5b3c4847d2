"""Private generation on local processes: this process is the client and the model owner.

It shares the (norm-folded) weights and the one-hot prompt, launches the parties and the dealer,
and reconstructs only the new token ids from the parties' shares.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from pinfer.decoder import prepare_weights
from pinfer.generation import check_request, one_hot
from pinfer.models.config import ModelConfig
from pinfer.norm_plan import NormShifts
from pinfer.parties.worker import generate_on_shares
from pinfer.protocols.sharing import share
from pinfer.protocols.world import run_parties


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


def generate_private(
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    prompt_ids: list[int],
    max_new_tokens: int,
    norm_shifts: NormShifts,
    n_parties: int = 2,
) -> PrivateGeneration:
    check_request(config, prompt_ids, max_new_tokens)
    started = time.perf_counter()
    weight_shares = share(prepare_weights(config, weights), n_parties)
    prompt_shares = share({"tokens": one_hot(prompt_ids, config.vocab_size)}, n_parties)
    results = run_parties(
        generate_on_shares, config, norm_shifts, max_new_tokens, n_parties=n_parties,
        party_kwargs=[{"weights": w, "prompt": p} for w, p in zip(weight_shares, prompt_shares)],
    )
    total = sum(r["token_id_shares"] for r in results)
    tokens = [int(v) for v in torch.round(total.double() / results[0]["token_id_scales"]).long()]
    steps = results[0]["step_seconds"]
    decode = steps["decode"]
    return PrivateGeneration(
        tokens=tokens,
        wall_seconds=time.perf_counter() - started,
        prefill_seconds=steps["prefill"][0],
        decode_seconds_per_token=statistics.median(decode) if decode else None,
        party_costs=[r["costs"] for r in results],
    )
