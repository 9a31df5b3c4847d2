"""The MPC cost harness: decode-step latency, bytes and rounds of each policy on shares.

The model is truncated to its first ``layers`` decoder layers (an MPC decode step of SmolLM2 costs
about a second per layer on 2 cores, so a full-depth grid over policies and lengths does not fit);
the cache is built by a plaintext prefill and secret-shared (``transfer``), since an MPC prefill of
thousands of tokens is out of reach on this host and a decode step's cost on shares is independent of
the cache's contents. The parts of a token outside the decoder layers (embedding, final norm, LM head,
arg-max) are measured once with a 0-layer model, so a full-depth token is estimated as
``outside + (measured - outside) * n_layers / layers``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from pinfer.model.decoder import Decoder
from pinfer.model.generation import one_hot
from pinfer.model.config import ModelConfig
from pinfer.model.plain_ops import PlainOps

from . import make_policy
from .base import KVPolicy
from .transfer import join_secrets, split_secrets


def truncate(config: ModelConfig, weights: dict[str, torch.Tensor], layers: int) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model's first ``layers`` decoder layers (embedding, final norm and head kept)."""
    kept = {k: v for k, v in weights.items()
            if not k.startswith("layers.") or int(k.split(".")[1]) < layers}
    return dataclasses.replace(config, n_layers=layers), kept


def build_policy(name: str, budget: float) -> KVPolicy | None:
    """``name`` at ``budget`` with its defaults, except that Quest's dense first layers are dropped so
    that the truncated model measures its selection (MPCache's defaults select in every layer, so
    any truncated depth is representative)."""
    if name == "full":
        return None
    if name == "quest":
        return make_policy(name, budget, dense_layers=0)
    return make_policy(name, budget)


def plaintext_cache(config: ModelConfig, prepared: dict[str, torch.Tensor], ids: list[int],
                    policy: KVPolicy | None) -> tuple[Any, dict[str, torch.Tensor]]:
    """Prefill ``ids`` in plaintext under ``policy``; the cache's public skeleton and secret tensors."""
    decoder = Decoder(config, PlainOps(prepared), kv_policy=policy)
    cache = decoder.new_cache()
    with torch.no_grad():
        decoder.forward(one_hot(ids, config.vocab_size), cache, 0)
    return split_secrets(cache)


def job_decode_costs(ctx: Any, config: ModelConfig, shifts: Any, start: int, steps: int,
                     skeletons: dict[str, Any], weights: Any, secrets: dict[str, Any], token: Any) -> dict[str, Any]:
    """On a party: for each policy, rebuild its cache on shares and run ``steps`` decode steps."""
    from pinfer.protocols import crypten_compat  # noqa: F401
    from crypten.mpc import MPCTensor

    from pinfer.protocols.mpc_ops import MpcOps
    from pinfer.protocols.sharing import FRACTIONAL_BITS

    ops = MpcOps(ctx.provider, ctx.costs, weights, shifts)
    first = MPCTensor.from_shares(token.expand()["token"], precision=FRACTIONAL_BITS)
    seconds: dict[str, list[float]] = {}
    for label, skeleton in skeletons.items():
        with ctx.costs.in_phase(f"{label}/setup"):
            cache = join_secrets(skeleton, secrets[label].expand(), ops)
        decoder = Decoder(config, ops)
        row, seconds[label] = first, []
        for step in range(steps):
            started = time.perf_counter()
            with ctx.costs.in_phase(f"{label}/decode"):
                logits = decoder.forward(row, cache, start + step)
                with ops.section("argmax"):
                    row = ops.argmax_onehot(logits)
            seconds[label].append(time.perf_counter() - started)
        for layer in cache:
            layer.release()
    return {"costs": ctx.costs.report(), "seconds": seconds}


def per_step(report: dict[str, Any], label: str, steps: int) -> dict[str, dict[str, float]]:
    """Party 0's decode costs of ``label`` by operator class, per step."""
    return {op: {k: v / steps for k, v in cost.items()} for op, cost in report.get(f"{label}/decode", {}).items()}


def totals(by_op: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: sum(c[k] for c in by_op.values()) for k in ("seconds", "bytes", "rounds", "dealer_bytes")}
