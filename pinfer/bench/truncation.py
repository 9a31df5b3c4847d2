"""``pinfer bench truncation``: where a private forward's local truncations could fail, per token.

Local truncation of a product of real value v (scale 2^32) fails with probability about |v| 2^-32
(``pinfer bench nonlinear`` measures that rate); the products the MPC backend truncates exactly
(``pinfer.protocols.mpc_ops``) never fail. This runs the plaintext forward of the same decoder over a
prompt and sums |v| at each site whose product the parties truncate: the expected number of failures
per token (the logits per generated token), by site, local or exact. The splines' and the softmax's
inner products are bounded by their constructions (powers of an offset below one segment,
exponentials below 1) and not listed.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from pinfer.bench.report import machine, table, write_json

PROMPT = ("Tell me about the history of Paris, from the Roman town of Lutetia to the capital of France "
          "today, and name three of its museums.")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("truncation", help="expected local-truncation failures per token, by site")
    parser.add_argument("--out", type=Path, required=True, help="directory for truncation.json")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", default=PROMPT)
    parser.set_defaults(func=run)


def site_magnitudes(model: str, prompt: str) -> tuple[int, dict[str, dict[str, float]]]:
    """Prompt length and, per truncation site, elements and sum of |v| over the prompt's forward."""
    from pinfer.model.decoder import Decoder, prepare_weights
    from pinfer.model.generation import one_hot
    from pinfer.model.plain_ops import PlainKVLayer, PlainOps
    from pinfer.model.registry import load_model

    loaded = load_model(model)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: {"elements": 0.0, "sum_abs": 0.0})

    def record(site: str, value: torch.Tensor) -> None:
        sums[site]["elements"] += value.numel()
        sums[site]["sum_abs"] += float(value.abs().sum())

    class RecordingKV(PlainKVLayer):
        def scores(self, queries: torch.Tensor) -> torch.Tensor:
            out = super().scores(queries)
            record("attention scores", out)
            return out

        def mix(self, weights: torch.Tensor) -> torch.Tensor:
            out = super().mix(weights)
            record("attention mix", out)
            return out

    class RecordingOps(PlainOps):
        up: torch.Tensor | None = None

        def linear(self, x: torch.Tensor, weight: str, bias: str | None = None) -> torch.Tensor:
            out = super().linear(x, weight, bias)
            leaf = weight.rsplit(".", 1)[-1]
            record(leaf, out)
            if leaf == "w_gate_up":
                self.up = out[..., out.shape[-1] // 2:]
            return out

        def normalize(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
            out = super().normalize(x, *args)
            record("norm output", out)
            return out

        def silu(self, x: torch.Tensor) -> torch.Tensor:
            out = super().silu(x)
            record("silu output", out)
            if self.up is not None:
                record("silu x up", out * self.up)
            return out

        def gelu(self, x: torch.Tensor) -> torch.Tensor:
            out = super().gelu(x)
            record("gelu output", out)
            return out

        def new_kv_layer(self) -> RecordingKV:
            return RecordingKV()

    ids = loaded.tokenizer.encode(prompt)
    decoder = Decoder(loaded.config, RecordingOps(prepare_weights(loaded.config, loaded.weights)))
    with torch.no_grad():
        decoder.forward(one_hot(ids, loaded.config.vocab_size), decoder.new_cache(), 0)
    return len(ids), dict(sums)


def run(args: argparse.Namespace) -> int:
    from pinfer.protocols.mpc_ops import EXACT_TRUNCATION

    tokens, sites = site_magnitudes(args.model, args.prompt)
    rows, report = [], {}
    for site, s in sites.items():
        # the logits are computed for the last position only: once per generated token
        per_token = 1 if site == "lm_head" else tokens
        local = s["sum_abs"] * 2.0**-32 / per_token
        exact = site in EXACT_TRUNCATION
        report[site] = {"elements_per_token": s["elements"] / per_token, "mean_abs": s["sum_abs"] / s["elements"],
                        "truncation": "exact" if exact else "local",
                        "expected_failures_per_token": 0.0 if exact else local, "local_would_be": local}
    for site, r in sorted(report.items(), key=lambda item: -item[1]["local_would_be"]):
        rows.append([site, r["elements_per_token"], r["mean_abs"], r["truncation"], r["local_would_be"],
                     r["expected_failures_per_token"]])
    total = sum(r["expected_failures_per_token"] for r in report.values())
    all_local = sum(r["local_would_be"] for r in report.values())
    info = machine()
    print(f"{args.model}, plaintext forward of a {tokens}-token prompt on {info['cpu']} ({info['device']}); "
          "expected failures = sum |v| 2^-32 per token")
    print(table(["site", "elements/token", "mean |v|", "truncation", "if local", "expected failures"], rows))
    print(f"\nper token: {total:.2e} expected failures ({all_local:.2e} if every site truncated locally)")
    path = write_json(args.out, "truncation.json", {
        "machine": info, "model": args.model, "prompt_tokens": tokens, "sites": report,
        "expected_failures_per_token": total, "if_all_local": all_local})
    print(f"wrote {path}")
    return 0
