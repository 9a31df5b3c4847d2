"""The MPC backend runs the same decoder as the plaintext backend and agrees with it.

Tiny random LLaMA and GPT-2 models (fast): logits on shares stay within the fixed-point error of the
plaintext logits, and greedy generation on shares yields the plaintext tokens.
"""

from __future__ import annotations

import pytest

from pinfer.model.decoder import Decoder, prepare_weights
from pinfer.model.generation import generate_plain, one_hot
from pinfer.model import norm_plan
from pinfer.model.registry import load_model, resolve
from pinfer.model.plain_ops import PlainOps
from pinfer.service.private import generate_private
from pinfer.protocols.sharing import FRACTIONAL_BITS, share

PROMPT = [5, 17, 42, 99, 3, 250, 7]


def job_logits(ctx, config, shifts, weights, prompt, n_prompt):
    """Prefill all but the last prompt token, then decode it: logits of both steps, opened."""
    from crypten.mpc import MPCTensor

    from pinfer.protocols.mpc_ops import MpcOps

    decoder = Decoder(config, MpcOps(ctx.provider, ctx.costs, weights, shifts))
    tokens = MPCTensor.from_shares(prompt.expand()["tokens"], precision=FRACTIONAL_BITS)
    cache = decoder.new_cache()
    prefill = decoder.forward(tokens[: n_prompt - 1], cache, 0).get_plain_text()
    decode = decoder.forward(tokens[n_prompt - 1 :], cache, n_prompt - 1).get_plain_text()
    return prefill, decode


def load(model: str):
    config, weights, tokenizer = load_model(model)
    return config, weights, norm_plan.for_model(resolve(model), config, weights, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_logits_on_shares_match_plaintext(world, model):
    config, weights, shifts = load(model)
    folded = prepare_weights(config, weights)
    tokens = one_hot(PROMPT, config.vocab_size)
    plain = Decoder(config, PlainOps(folded))
    cache = plain.new_cache()
    expected_prefill = plain.forward(tokens[:-1], cache, 0)
    expected_decode = plain.forward(tokens[-1:], cache, len(PROMPT) - 1)
    bundles = share(folded, 2)
    prompts = share({"tokens": tokens}, 2)
    prefill, decode = world.run(
        job_logits, config, shifts, party_kwargs=[{"weights": w, "prompt": p, "n_prompt": len(PROMPT)}
                                          for w, p in zip(bundles, prompts)],
    )[0]
    assert (prefill - expected_prefill).abs().max() < 0.05
    assert (decode - expected_decode).abs().max() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_private_greedy_tokens_equal_plaintext(model):
    config, weights, shifts = load(model)
    private = generate_private(config, weights, PROMPT, 4, shifts)
    assert private.tokens == generate_plain(config, weights, PROMPT, 4)
    decode = private.phase_totals("decode")
    assert decode[0]["bytes"] == decode[1]["bytes"] > 0
    # party 0 receives every tuple correction and its FSS key shares; party 1 only the FSS keys'
    # correction words, pushed by the dealer
    assert decode[0]["dealer_bytes"] > decode[1]["dealer_bytes"] > 0


def test_requests_beyond_the_context_are_rejected_before_any_work():
    config, weights, shifts = load("tiny-llama")
    with pytest.raises(ValueError, match="context"):
        generate_private(config, weights, PROMPT, config.max_positions, shifts)
    with pytest.raises(ValueError, match="vocabulary"):
        generate_private(config, weights, [config.vocab_size], 1, shifts)
    with pytest.raises(ValueError, match="empty"):
        generate_private(config, weights, [], 1, shifts)
