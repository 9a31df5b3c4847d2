"""End to end: a private generation with the real model through the user-facing command, once.

The MLP projections' products are truncated exactly (``pinfer.protocols.truncation``); the other
products' local truncations fail with probability |v| 2^-32 each, about 3e-5 expected failures per
SmolLM2 token (``pinfer bench truncation``), so this test's 30-odd positions diverge from plaintext
for that reason in about one run in a thousand.
"""

from __future__ import annotations

import json

import pytest

from pinfer.cli import main

ARGS = ["generate", "--prompt", "What is the capital of France?", "--max-new-tokens", "3", "--check", "--json"]


@pytest.mark.slow
def test_private_generation_of_smollm2_equals_plaintext(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(ARGS)
    report = json.loads(capsys.readouterr().out)
    assert code == 0, f"private {report['tokens']} vs plaintext {report['plaintext_tokens']}"
    assert report["match"] is True and report["tokens"] == report["plaintext_tokens"]
    assert report["text"].startswith("The capital")
    assert set(report["latency_s"]) >= {"prefill", "decode_per_token"}
    assert report["bytes_per_party"][0] == report["bytes_per_party"][1] > 0
    assert report["rounds"][0] > 0
