"""``pinfer bench agreement``: private greedy tokens vs plaintext greedy tokens on fixed prompts.

Each prompt (chat template, at most 64 tokens) is generated privately on one shared model and in
plaintext with the same forward. Where the two first differ, the plaintext logits at that step tell
whether it was a near-tie: the gap between the plaintext's choice and the private choice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from pinfer.bench.report import machine, table, write_json

PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "Explain photosynthesis in one sentence.",
    "List two benefits of regular exercise.",
)
NEAR_TIE = 0.1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agreement", help="private vs plaintext greedy tokens on fixed prompts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the fixed prompts")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.set_defaults(func=run)


def divergence_gap(config: Any, weights: dict[str, torch.Tensor], ids: list[int], plain: list[int], private: list[int]) -> float | None:
    """Plaintext logit of its own choice minus that of the private choice at the first difference."""
    from pinfer.decoder import Decoder, prepare_weights
    from pinfer.generation import one_hot
    from pinfer.plain_ops import PlainOps

    step = next((i for i, (a, b) in enumerate(zip(plain, private)) if a != b), None)
    if step is None:
        return None
    decoder = Decoder(config, PlainOps(prepare_weights(config, weights)))
    with torch.no_grad():
        logits = decoder.forward(one_hot(ids + plain[:step], config.vocab_size), decoder.new_cache(), 0)[0]
    return float(logits[plain[step]] - logits[private[step]])


def run(args: argparse.Namespace) -> int:
    from pinfer import norm_plan
    from pinfer.commands.generate import prompt_ids
    from pinfer.generation import generate_plain
    from pinfer.models.registry import load_model, resolve
    from pinfer.private import PrivateModel

    config, weights, tokenizer = load_model(args.model)
    shifts = norm_plan.for_model(resolve(args.model), config, weights, tokenizer)
    rows, records = [], []
    with PrivateModel(config, weights, shifts) as model:
        print(f"shared {args.model} in {model.setup_seconds:.1f} s", flush=True)
        for text in PROMPTS[: args.prompts]:
            ids = prompt_ids(tokenizer, text, raw=False)
            started = time.perf_counter()
            private = model.generate(ids, args.max_new_tokens)
            plain = generate_plain(config, weights, ids, args.max_new_tokens)
            agree = next((i for i, (a, b) in enumerate(zip(plain, private.tokens)) if a != b), len(plain))
            gap = divergence_gap(config, weights, ids, plain, private.tokens)
            record = {
                "prompt": text, "prompt_tokens": len(ids), "private_tokens": private.tokens,
                "plaintext_tokens": plain, "match": plain == private.tokens, "agreeing_prefix": agree,
                "divergence_logit_gap": gap, "near_tie": gap is not None and gap < NEAR_TIE,
                "private_text": tokenizer.decode(private.tokens), "plaintext_text": tokenizer.decode(plain),
                "prefill_seconds": private.prefill_seconds,
                "decode_seconds_per_token": private.decode_seconds_per_token,
                "wall_seconds": time.perf_counter() - started,
            }
            records.append(record)
            rows.append([text[:32], len(ids), "yes" if record["match"] else "no", agree,
                         "-" if gap is None else f"{gap:.3f}", private.decode_seconds_per_token or float("nan")])
            print(table(["prompt", "tokens", "match", "agree", "gap", "s/token"], rows[-1:]), flush=True)
            write_json(args.out, "agreement.json", {"machine": machine(), "model": args.model,
                                                    "max_new_tokens": args.max_new_tokens, "prompts": records})
    info = machine()
    matched = sum(r["match"] for r in records)
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, device {info['device']}; 2 parties + dealer on loopback (TLS)")
    print(table(["prompt", "tokens", "match", "agreeing prefix", "logit gap at divergence", "decode s/token"], rows))
    print(f"\n{matched}/{len(records)} prompts: private greedy tokens equal plaintext on every token; "
          f"wrote {args.out / 'agreement.json'}")
    return 0
