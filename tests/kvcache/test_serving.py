"""The served KV policies as request parameters: resolution of names and budgets, and ``pinfer generate
--kv-policy`` on local processes (tiny-llama) against the plaintext run of the same policy."""

from __future__ import annotations

import json
import math
import re

import pytest

from pinfer.kvcache import POLICIES
from pinfer.kvcache.serving import DEFAULT_POLICY, SERVED, KVChoice, KVRequestError, resolve
from pinfer.model.decoder import Decoder, prepare_weights
from pinfer.model.generation import one_hot
from pinfer.model.plain_ops import PlainOps
from pinfer.model.registry import load_model


def test_every_policy_is_served_with_a_default_budget() -> None:
    assert [p.name for p in SERVED] == list(POLICIES)
    assert DEFAULT_POLICY == "full"
    for served in SERVED:
        assert resolve(served.name) == KVChoice(served.name, served.default_budget)
        assert type(resolve(served.name).build()) is POLICIES[served.name]


def test_defaults_and_explicit_budgets() -> None:
    assert resolve() == resolve("", 0.0) == KVChoice("full", 1.0)
    assert resolve("full", 1.0) == KVChoice("full", 1.0)
    assert resolve("mpcache", 0.25) == KVChoice("mpcache", 0.25)
    assert resolve("h2o", 1.0).build().budget == 1.0


@pytest.mark.parametrize(("policy", "budget", "message"), [
    ("lru", 0.0, "unknown KV policy 'lru'"),
    ("MPCache", 0.1, "unknown KV policy"),
    ("h2o", 1.01, "in (0, 1]"),
    ("h2o", -0.5, "in (0, 1]"),
    ("h2o", math.inf, "in (0, 1]"),
    ("h2o", math.nan, "in (0, 1]"),
    ("full", 0.5, "keeps every token"),
])
def test_what_is_not_served_is_refused_by_name(policy: str, budget: float, message: str) -> None:
    with pytest.raises(KVRequestError, match=re.escape(message)):
        resolve(policy, budget)


def test_a_long_unknown_name_is_cut_in_the_message() -> None:
    with pytest.raises(KVRequestError) as refused:
        resolve("x" * 10_000)
    assert len(str(refused.value)) < 200


def test_the_prompt_of_the_service_tests_makes_the_budgeted_policies_evict() -> None:
    """tests/service compares every policy on shares with its plaintext run on a 96-token prompt at a 25%
    budget; that comparison means something only if the policies attend to fewer tokens than are cached.
    Quest keeps its first 2 layers dense, which on tiny-llama is every layer, so it attends in full."""
    config, weights, _ = load_model("tiny-llama")
    ops = PlainOps(prepare_weights(config, weights))
    tokens = one_hot([(37 * i + 11) % 500 + 3 for i in range(97)], config.vocab_size)
    for served in SERVED:
        decoder = Decoder(config, ops, resolve(served.name, 0.0 if served.name == "full" else 0.25).build())
        cache = decoder.new_cache()
        decoder.forward(tokens[:96], cache, 0)
        decoder.forward(tokens[96:], cache, 96)
        attended = [layer.length for layer in cache]
        if served.name in ("full", "quest"):
            assert attended == [97] * config.n_layers, (served.name, attended)
        else:
            assert max(attended) <= 24 + 1, (served.name, attended)


@pytest.mark.slow
def test_cli_generate_locally_with_a_kv_policy(capsys: pytest.CaptureFixture[str]) -> None:
    from pinfer.cli import main

    argv = ["generate", "--model", "tiny-llama", "--raw", "--max-new-tokens", "2", "--json", "--check",
            "--prompt", "a private prompt that is long enough for the cache to evict " * 2]
    assert main([*argv, "--kv-policy", "h2o", "--kv-budget", "0.25"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kv_policy"], report["kv_budget"]) == ("h2o", 0.25) and report["prompt_tokens"] > 100
    assert report["tokens"] == report["plaintext_tokens"] and report["match"]
    assert main([*argv, "--kv-policy", "lru"]) == 2
    assert "unknown KV policy 'lru'" in capsys.readouterr().err
