"""Greedy generation, once for every backend, and the private (secret-shared) run of it.

The loop never looks at a token: the backend's one-hot argmax row is fed straight back as the next
input, so on shares the new token stays shared and the parties need no round trip to the client. Only
``emit`` sees each new one-hot row; the plaintext caller turns it into an id, a party turns it into its
share of the id for the client.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from pinfer.model.config import ModelConfig
from pinfer.model.decoder import Decoder, KVCachePolicy, prepare_weights
from pinfer.model.plain_ops import PlainOps
from pinfer.model.tensor_ops import KVLayer, Value


def greedy_loop(
    decoder: Decoder,
    prompt: Value,
    max_new_tokens: int,
    emit: Callable[[Value], None],
    phase: Callable[[str], AbstractContextManager[None]] = lambda name: nullcontext(),
) -> list[KVLayer]:
    """Prefill ``prompt`` (one-hot rows), decode ``max_new_tokens`` greedy tokens; return the cache."""
    cache = decoder.new_cache()
    position = prompt.shape[0]
    with phase("prefill"):
        token = _next_token(decoder, decoder.forward(prompt, cache, 0))
    emit(token)
    for _ in range(max_new_tokens - 1):
        with phase("decode"):
            token = _next_token(decoder, decoder.forward(token, cache, position))
        position += 1
        emit(token)
    return cache


LOGIT_SPREAD = 2.0**14
"""Public bound on a logit row's max - min for the greedy arg-max (measured on SmolLM2: 39), so the
MPC comparisons run in 32-bit packed lanes."""


def _next_token(decoder: Decoder, logits: Value) -> Value:
    with decoder.ops.section("argmax"):
        return decoder.ops.argmax_onehot(logits, spread=LOGIT_SPREAD)


def check_request(config: ModelConfig, prompt_ids: list[int], max_new_tokens: int) -> None:
    """Reject requests the model cannot serve before any work starts."""
    if not prompt_ids:
        raise ValueError("the prompt is empty after tokenization")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if len(prompt_ids) + max_new_tokens > config.max_positions:
        raise ValueError(
            f"prompt ({len(prompt_ids)} tokens) plus {max_new_tokens} new tokens exceeds the model's "
            f"context of {config.max_positions}"
        )
    if min(prompt_ids) < 0 or max(prompt_ids) >= config.vocab_size:
        raise ValueError("token id outside the model's vocabulary")


def one_hot(prompt_ids: list[int], vocab_size: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(prompt_ids, dtype=torch.int64), vocab_size).float()


def generate_plain(
    config: ModelConfig, weights: dict[str, torch.Tensor], prompt_ids: list[int], max_new_tokens: int,
    kv_policy: KVCachePolicy | None = None,
) -> list[int]:
    """The plaintext reference: greedy tokens of the same forward the parties run (with the same KV policy)."""
    check_request(config, prompt_ids, max_new_tokens)
    decoder = Decoder(config, PlainOps(prepare_weights(config, weights)), kv_policy)
    tokens: list[int] = []
    with torch.no_grad():
        greedy_loop(decoder, one_hot(prompt_ids, config.vocab_size), max_new_tokens,
                    emit=lambda row: tokens.append(int(row.argmax(dim=-1)[0])))
    return tokens
