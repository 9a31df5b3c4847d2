"""``pinfer bench agreement``: private greedy tokens vs plaintext greedy tokens on fixed prompts.

Each prompt (chat template, at most 64 tokens) is generated privately on one shared model and in
plaintext with the same forward. Where the two first differ, the plaintext logits at that step tell
whether it was a near-tie: the gap between the plaintext's choice and the private choice.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--resume", action="store_true",
                        help="keep the prompts already in OUT/agreement.json (same model and length) and run the rest")
    parser.set_defaults(func=run)


def divergence_gap(config: Any, weights: dict[str, torch.Tensor], ids: list[int], plain: list[int], private: list[int]) -> float | None:
    """Plaintext logit of its own choice minus that of the private choice at the first difference."""
    from pinfer.model.decoder import Decoder, prepare_weights
    from pinfer.model.generation import one_hot
    from pinfer.model.plain_ops import PlainOps

    step = next((i for i, (a, b) in enumerate(zip(plain, private)) if a != b), None)
    if step is None:
        return None
    decoder = Decoder(config, PlainOps(prepare_weights(config, weights)))
    with torch.no_grad():
        logits = decoder.forward(one_hot(ids + plain[:step], config.vocab_size), decoder.new_cache(), 0)[0]
    return float(logits[plain[step]] - logits[private[step]])


def finished_records(out_dir: Path, model: str, max_new_tokens: int) -> list[dict[str, Any]]:
    """Records of an earlier run that used the same model and length, so a long run can continue."""
    path = out_dir / "agreement.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("model") != model or earlier.get("max_new_tokens") != max_new_tokens:
        return []
    return [r for r in earlier["prompts"] if r["prompt"] in PROMPTS]


def _row(record: dict[str, Any]) -> list[Any]:
    gap = record["divergence_logit_gap"]
    return [record["prompt"][:32], record["prompt_tokens"], "yes" if record["match"] else "no",
            record["agreeing_prefix"], "-" if gap is None else f"{gap:.3f}",
            record["decode_seconds_per_token"] or float("nan")]


def run(args: argparse.Namespace) -> int:
    from pinfer.model import norm_plan
    from pinfer.model.generation import generate_plain
    from pinfer.model.registry import load_model, resolve
    from pinfer.model.tokenizer import encode_prompt
    from pinfer.service.private import PrivateModel

    config, weights, tokenizer = load_model(args.model)
    shifts = norm_plan.for_model(resolve(args.model), config, weights, tokenizer)
    records = finished_records(args.out, args.model, args.max_new_tokens) if args.resume else []
    done = {r["prompt"] for r in records}
    if records:
        print(f"resuming: {len(records)} prompts already measured in {args.out / 'agreement.json'}", flush=True)
    with PrivateModel(config, weights, shifts) as model:
        print(f"shared {args.model} in {model.setup_seconds:.1f} s", flush=True)
        for text in PROMPTS[: args.prompts]:
            if text in done:
                continue
            ids = encode_prompt(tokenizer, text, raw=False)
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
            print(table(["prompt", "tokens", "match", "agree", "gap", "s/token"], [_row(record)]), flush=True)
            write_json(args.out, "agreement.json", {"machine": machine(), "model": args.model,
                                                    "max_new_tokens": args.max_new_tokens, "prompts": records})
    info = machine()
    matched = sum(r["match"] for r in records)
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, device {info['device']}; 2 parties + dealer on loopback (TLS)")
    print(table(["prompt", "tokens", "match", "agreeing prefix", "logit gap at divergence", "decode s/token"],
                [_row(r) for r in records]))
    print(f"\n{matched}/{len(records)} prompts: private greedy tokens equal plaintext on every token; "
          f"wrote {args.out / 'agreement.json'}")
    return 0
