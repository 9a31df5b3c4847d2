"""End to end: a private generation with the real model through the user-facing command.

CrypTen's two-party truncation fails with probability about ``|v| 2^-32`` per product of value v
(``docs/mpc.md``, known limits): at SmolLM2's magnitudes about 2e-4 per token, so roughly one run in a
hundred of this 40-token test diverges from plaintext for that reason alone. A mismatch is therefore
run once more with fresh shares; two mismatches in a row fail (a real defect repeats, a truncation
failure almost never does).
"""

from __future__ import annotations

import json

import pytest

from pinfer.cli import main

ARGS = ["generate", "--prompt", "What is the capital of France?", "--max-new-tokens", "3", "--check", "--json"]


@pytest.mark.slow
def test_private_generation_of_smollm2_equals_plaintext(capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for _ in range(2):
        code = main(ARGS)
        report = json.loads(capsys.readouterr().out)
        runs.append((report["tokens"], report["plaintext_tokens"]))
        if code == 0:
            break
    assert code == 0, f"private vs plaintext tokens, per run: {runs}"
    assert report["match"] is True and report["tokens"] == report["plaintext_tokens"]
    assert report["text"].startswith("The capital")
    assert set(report["latency_s"]) >= {"prefill", "decode_per_token"}
    assert report["bytes_per_party"][0] == report["bytes_per_party"][1] > 0
    assert report["rounds"][0] > 0
