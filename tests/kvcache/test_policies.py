"""Every KV policy runs on both backends and agrees: plaintext vs shares on tiny-llama.

One world for the module and one job for all policies (a 64-token prompt prefilled on shares, then
teacher-forced decode steps). Cluster sizes are shrunk so the short context has many clusters. The
MPCache and Quest selections are opened in the test only (the policies never open them) and compared
with the plaintext ones per (layer, KV head, step): issue 4 asks for >= 95% identical sets.
"""

from __future__ import annotations

import pytest
import torch

from pinfer.model import norm_plan
from pinfer.model.decoder import Decoder, prepare_weights
from pinfer.model.generation import one_hot
from pinfer.kvcache import MPCacheParams, make_policy
from pinfer.kvcache.clusters import selections
from pinfer.model.registry import load_model, resolve
from pinfer.model.plain_ops import PlainOps
from pinfer.protocols.sharing import FRACTIONAL_BITS, share

PROMPT_LEN, STEPS, BUDGET = 64, 6, 0.25
SMALL_CLUSTERS = MPCacheParams(coarse=8, fine=4, own_first=0, own_last=0)  # layer 1 reuses layer 0
CASES = {
    "full": {},
    "streamingllm": {},
    "h2o": {},
    "snapkv": {"window": 8},
    "tova": {},
    "quest": {"page": 4, "dense_layers": 0},
    "mpcache": {"params": SMALL_CLUSTERS},
    "mpcache-threshold": {"params": MPCacheParams(coarse=8, fine=4, own_first=0, own_last=0,
                                                  static="threshold", tau=2e-3)},
}


def policy(case: str):
    return make_policy(case.split("-")[0], BUDGET, **CASES[case])


def run_policy(decoder: Decoder, tokens, opened) -> dict:
    """Prefill, then teacher-forced decode; logits of every step and the recorded selections."""
    trace = [] if hasattr(decoder.kv_policy, "trace") else None
    if trace is not None:
        decoder.kv_policy.trace = trace
    cache = decoder.new_cache()
    logits = [opened(decoder.forward(tokens[:PROMPT_LEN], cache, 0))]
    for step in range(STEPS):
        position = PROMPT_LEN + step
        logits.append(opened(decoder.forward(tokens[position : position + 1], cache, position)))
    picks = [(layer, opened(onehot)) for layer, onehot in trace or []]
    return {"logits": torch.cat(logits), "picks": picks}


def job_policies(ctx, config, shifts, cases, weights, tokens):
    from crypten.mpc import MPCTensor

    from pinfer.protocols.mpc_ops import MpcOps

    ops = MpcOps(ctx.provider, ctx.costs, weights, shifts)
    shared = MPCTensor.from_shares(tokens.expand()["tokens"], precision=FRACTIONAL_BITS)
    return {case: run_policy(Decoder(config, ops, kv_policy=policy(case)), shared, lambda v: v.get_plain_text())
            for case in cases}


def job_topk(ctx, k, x):
    from crypten.mpc import MPCTensor

    from pinfer.protocols.oblivious import topk_onehot

    return topk_onehot(MPCTensor.from_shares(x.expand()["x"], precision=FRACTIONAL_BITS), k).get_plain_text()


@pytest.mark.slow
def test_topk_onehot_on_shares_equals_plaintext(world):
    """Exact one-hot rows, ties to the lower index, as the plaintext backend's stable sort."""
    x = torch.tensor([[0.5, -1.0, 0.5, 2.0, 0.25, 2.0, -3.0, 0.5, 1.0]] * 2)
    x[1] = torch.randn(9, generator=torch.Generator().manual_seed(3))
    expected = PlainOps({}).topk_onehot(x, 5)
    got = world.run(job_topk, 5, party_kwargs=[{"x": b} for b in share({"x": x}, 2)])[0]
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def runs(world):
    config, weights, tokenizer = load_model("tiny-llama")
    shifts = norm_plan.for_model(resolve("tiny-llama"), config, weights, tokenizer)
    folded = prepare_weights(config, weights)
    ids = torch.randint(0, config.vocab_size, (PROMPT_LEN + STEPS,), generator=torch.Generator().manual_seed(7))
    tokens = one_hot(ids.tolist(), config.vocab_size)
    plain = {case: run_policy(Decoder(config, PlainOps(folded), kv_policy=policy(case)), tokens, lambda v: v)
             for case in CASES}
    shared = world.run(job_policies, config, shifts, list(CASES),
                       party_kwargs=[{"weights": w, "tokens": t}
                                     for w, t in zip(share(folded, 2), share({"tokens": tokens}, 2))])[0]
    return plain, shared


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_policy_on_shares_matches_plaintext(runs, case):
    plain, shared = runs
    gap = (plain[case]["logits"] - shared[case]["logits"]).abs().max(dim=-1).values
    assert gap.max() < 0.1, f"{case}: per-step max |logit gap| {gap.tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mpcache", "mpcache-threshold", "quest"])
def test_shares_select_the_plaintext_clusters(runs, case):
    plain, shared = runs
    expected, got = selections(plain[case]["picks"]), selections(shared[case]["picks"])
    assert expected.keys() == got.keys() and expected
    same = sum(expected[key] == got[key] for key in expected)
    differing = sorted(key for key in expected if expected[key] != got[key])
    print(f"{case}: {same}/{len(expected)} (layer, head, step) selections agree; differing: {differing}")
    assert same / len(expected) >= 0.95, f"{case}: {same}/{len(expected)} (layer, head, step) selections agree"


def test_budgets_shrink_what_is_attended():
    """Plaintext: with a 25% budget each decode step attends to at most the budget (+1 for H2O/TOVA's
    incoming token, which is attended before its eviction decision)."""
    config, weights, _ = load_model("tiny-llama")
    decoder_ops = PlainOps(prepare_weights(config, weights))
    tokens = one_hot(list(range(PROMPT_LEN + 1)), config.vocab_size)
    budget = int(BUDGET * PROMPT_LEN)
    for case in CASES:
        if case == "full":
            continue
        decoder = Decoder(config, decoder_ops, kv_policy=policy(case))
        cache = decoder.new_cache()
        decoder.forward(tokens[:PROMPT_LEN], cache, 0)
        decoder.forward(tokens[PROMPT_LEN:], cache, PROMPT_LEN)
        limit = budget + 1 if case in ("h2o", "tova", "snapkv") else budget
        assert all(layer.length <= limit for layer in cache), (case, [layer.length for layer in cache])
