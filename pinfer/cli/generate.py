"""``pinfer generate``: one private generation, on fresh local processes or against a running service.

Without ``--endpoint`` this process is client and model owner at once and launches its own parties
and dealer. With ``--endpoint`` it is only a client of a running pinfer service (``pinfer up`` or
docker-compose): the prompt leaves this process only as sealed shares.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, TextIO

from pinfer.model.registry import load_model, resolve
from pinfer.model.tokenizer import encode_prompt


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="private greedy generation on secret shares")
    parser.add_argument("--prompt", required=True, help="prompt text (tokenized locally by the client)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint directory")
    parser.add_argument("--parties", type=int, choices=(2, 3), default=2)
    parser.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    parser.add_argument("--kv-policy", help="KV-cache policy: full, streamingllm, h2o, snapkv, tova, quest or mpcache "
                                            "(default: the service's default, full)")
    parser.add_argument("--kv-budget", type=float,
                        help="kept fraction of the prompt for the KV policy, in (0, 1] (default: the policy's)")
    parser.add_argument("--check", action="store_true",
                        help="also run the plaintext reference and compare (with --endpoint: here, from the public "
                             "model the service was provisioned from)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    service = parser.add_argument_group("running service (client SDK)")
    service.add_argument("--endpoint", help="orchestrator host:port; generate through the service")
    service.add_argument("--token", help="bearer token (prefer --token-file or PINFER_TOKEN)")
    service.add_argument("--token-file", help="file holding the bearer token")
    service.add_argument("--ca", help="deployment CA certificate the orchestrator's certificate chains to")
    parser.set_defaults(func=run)


def until_stop(tokens: list[int], stop_ids: tuple[int, ...]) -> list[int]:
    """The client cuts the text at the first stop token; the parties always run the public count."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i]
    return tokens


class PrefillProgress:
    """A progress line while the parties run the prefill, until the first token arrives.

    On a terminal it counts the seconds in place; elsewhere it is written once, then completed.
    """

    TICK_S = 1.0

    def __init__(self, prompt_tokens: int, stream: TextIO, shown: bool = True) -> None:
        self._prompt_tokens = prompt_tokens
        self._stream = stream
        self._shown = shown
        self._finished = threading.Event()
        self._ticker: threading.Thread | None = None
        self._start = 0.0

    @property
    def _head(self) -> str:
        return f"prefill   : {self._prompt_tokens} prompt tokens on shares ..."

    def __enter__(self) -> PrefillProgress:
        self._start = time.monotonic()
        if self._shown:
            print(self._head, end="", file=self._stream, flush=True)
            if self._stream.isatty():
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._finished.wait(self.TICK_S):
            print(f"\r{self._head} {time.monotonic() - self._start:.0f} s", end="", file=self._stream, flush=True)

    def done(self, status: str | None = None) -> None:
        """End the line with the time to the first token, or with ``status``."""
        if self._finished.is_set():
            return
        self._finished.set()
        if self._ticker is not None:
            self._ticker.join()
            print(f"\r{self._head}", end="", file=self._stream)
        if self._shown:
            status = status or f"first token after {time.monotonic() - self._start:.1f} s"
            print(f" {status}", file=self._stream, flush=True)

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.done("failed" if exc_type is not None else None)


def run_remote(args: argparse.Namespace) -> int:
    """Generate through a running service with the client SDK; the text streams as tokens arrive."""
    import os

    import grpc

    from pinfer.service.client import Client

    token = args.token or os.environ.get("PINFER_TOKEN")
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    if not token or not args.ca:
        print("pinfer generate: --endpoint needs a token (--token-file, --token or PINFER_TOKEN) and --ca",
              file=sys.stderr)
        return 2
    try:
        with Client(args.endpoint, token, args.ca) as client:
            report, ids = _generate_remote(client, args)
    except grpc.RpcError as exc:
        print(f"\npinfer generate: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a KV policy or budget the service does not offer
        print(f"pinfer generate: {exc}", file=sys.stderr)
        return 2
    if args.check:
        _add_reference(report, ids, args.max_new_tokens)
    if args.json:
        print(json.dumps(report))
    else:
        _print_remote(report)
    return 0 if report.get("match", True) else 1


def _generate_remote(client: Any, args: argparse.Namespace) -> tuple[dict[str, Any], list[int]]:
    """One generation through the service (its report and the prompt ids); the human format shows the
    prefill's progress, then prints the text as it arrives."""
    from pinfer.service.client import text_pieces

    info = client.model_info(args.model)
    kv_policy, kv_budget = info.kv_choice(args.kv_policy, args.kv_budget)
    tokenizer = client.tokenizer(info)
    ids = encode_prompt(tokenizer, args.prompt, args.raw)
    received: list[Any] = []
    arrivals: list[float] = []

    progress = PrefillProgress(len(ids), sys.stderr, shown=not args.json)

    def recorded(tokens: Any) -> Any:
        for token in tokens:
            if not received:
                progress.done()
                if not args.json:
                    print("private   : ", end="", flush=True)
            received.append(token)
            arrivals.append(time.monotonic())
            yield token

    start = time.monotonic()
    pieces = []
    tokens = client.generate_ids(ids, args.max_new_tokens, model=info.name, kv_policy=kv_policy, kv_budget=kv_budget)
    with progress:
        for piece in text_pieces(tokenizer, info.eos_token_ids, recorded(tokens)):
            pieces.append(piece)
            if not args.json:
                print(piece, end="", flush=True)
    if not args.json:
        print()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    by_phase: dict[str, list[dict[str, float]]] = {}
    for token in received:
        totals = by_phase.setdefault(token.phase, [
            {"seconds": 0.0, "bytes": 0, "rounds": 0, "dealer_bytes": 0} for _ in range(info.parties)])
        for cost in token.costs:
            party = totals[cost.party]
            party["seconds"] += cost.seconds
            party["bytes"] += cost.bytes_sent
            party["rounds"] += cost.rounds
            party["dealer_bytes"] += cost.dealer_bytes
    return {
        "model": info.name,
        "endpoint": args.endpoint,
        "source": info.tokenizer,
        "prompt_tokens": len(ids),
        "prompt_input": _prompt_input(info.parties, len(ids), info.config.vocab_size),
        "kv_policy": kv_policy,
        "kv_budget": kv_budget,
        "text": "".join(pieces),
        "tokens": [t.token_id for t in received],
        "latency_s": {
            "first_token": round(arrivals[0] - start, 3) if arrivals else None,
            "decode_per_token": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "total": round(time.monotonic() - start, 3),
        },
        "bytes_per_party": [sum(p[i]["bytes"] for p in by_phase.values()) for i in range(info.parties)],
        "rounds": [sum(p[i]["rounds"] for p in by_phase.values()) for i in range(info.parties)],
        "by_phase": by_phase,
    }, ids


def _add_reference(report: dict[str, Any], ids: list[int], max_new_tokens: int) -> None:
    """The plaintext reference, computed here from the public model the service was provisioned from,
    with the KV policy the service ran."""
    from pinfer.kvcache.serving import resolve
    from pinfer.model.generation import generate_plain

    config, weights, tokenizer = load_model(report["source"])
    kv_policy = resolve(report["kv_policy"], report["kv_budget"]).build()
    plain = generate_plain(config, weights, ids, max_new_tokens, kv_policy)
    report["plaintext_tokens"] = plain
    report["plaintext_text"] = tokenizer.decode(until_stop(plain, config.eos_token_ids))
    report["match"] = plain == report["tokens"]
    report["matching_prefix"] = next((i for i, (a, b) in enumerate(zip(plain, report["tokens"])) if a != b),
                                     len(plain))


def _print_remote(report: dict[str, Any]) -> None:
    _print_verdict(report, quote=False)
    _print_kv(report)
    latency = report["latency_s"]
    print(f"latency   : first token {latency['first_token']} s ({report['prompt_tokens']} prompt tokens, session "
          f"start included), decode {latency['decode_per_token']} s/token, total {latency['total']} s (client side)")
    _print_phase_costs(report, with_seconds=True)


def _print_verdict(report: dict[str, Any], quote: bool) -> None:
    if "plaintext_text" in report:
        verdict = "identical tokens" if report["match"] else f"first {report['matching_prefix']} tokens agree"
        text = repr(report["plaintext_text"]) if quote else report["plaintext_text"]
        print(f"plaintext : {text}  ({verdict})")


def _print_kv(report: dict[str, Any]) -> None:
    sent = report["prompt_input"]
    print(f"prompt in : {sent['form']}, {' / '.join(f'{b:,}' for b in sent['bytes_per_party'])} bytes "
          f"to party {' / '.join(map(str, range(len(sent['bytes_per_party']))))}")
    if report["kv_policy"]:  # empty: a service from before the choice of policy
        print(f"kv cache  : {report['kv_policy']}, budget {report['kv_budget']:g} of the prompt")


def _prompt_input(parties: int, prompt_tokens: int, vocab_size: int) -> dict[str, Any]:
    """How the prompt went to the parties, and each party's payload in bytes."""
    from pinfer.protocols import token_input

    return {"form": token_input.prompt_form(parties),
            "bytes_per_party": [token_input.payload(party, parties, prompt_tokens, vocab_size).nbytes
                                for party in range(parties)]}


def _print_phase_costs(report: dict[str, Any], with_seconds: bool) -> None:
    for phase, totals in report["by_phase"].items():
        party0 = totals[0]
        steps = f", {party0['seconds']:.2f} s of party 0 steps" if with_seconds else ""
        print(f"{phase:<10}: {party0['bytes'] / 1e6:.2f} MB sent by party 0, {party0['rounds']} rounds, "
              f"{party0['dealer_bytes'] / 1e6:.2f} MB dealer traffic{steps}")


def run(args: argparse.Namespace) -> int:
    if args.endpoint:
        return run_remote(args)
    from pinfer.kvcache import serving as kv_serving
    from pinfer.model import norm_plan
    from pinfer.model.generation import generate_plain
    from pinfer.service.private import generate_private

    try:
        kv = kv_serving.resolve(args.kv_policy or "", args.kv_budget or 0.0)
    except kv_serving.KVRequestError as exc:
        print(f"pinfer generate: {exc}", file=sys.stderr)
        return 2
    config, weights, tokenizer = load_model(args.model)
    shifts = norm_plan.for_model(resolve(args.model), config, weights, tokenizer)
    ids = encode_prompt(tokenizer, args.prompt, args.raw)
    try:
        result = generate_private(config, weights, ids, args.max_new_tokens, shifts, n_parties=args.parties,
                                  kv_policy=kv.build())
    except ValueError as exc:
        print(f"pinfer generate: {exc}", file=sys.stderr)
        return 2
    text = tokenizer.decode(until_stop(result.tokens, config.eos_token_ids))
    prefill = result.phase_totals("prefill")
    decode = result.phase_totals("decode")
    setup = result.phase_totals("setup")
    report: dict[str, Any] = {
        "model": args.model,
        "prompt_tokens": len(ids),
        "prompt_input": _prompt_input(args.parties, len(ids), config.vocab_size),
        "kv_policy": kv.policy,
        "kv_budget": kv.budget,
        "text": text,
        "tokens": result.tokens,
        "latency_s": {
            "total": round(result.wall_seconds, 3),
            "prefill": round(result.prefill_seconds, 3),
            "decode_per_token": None if result.decode_seconds_per_token is None
            else round(result.decode_seconds_per_token, 3),
        },
        "bytes_per_party": [s["bytes"] + p["bytes"] + d["bytes"] for s, p, d in zip(setup, prefill, decode)],
        "rounds": [s["rounds"] + p["rounds"] + d["rounds"] for s, p, d in zip(setup, prefill, decode)],
        "by_phase": {"setup": setup, "prefill": prefill, "decode": decode},
        "costs": result.party_costs[0],
    }
    if args.check:
        plain = generate_plain(config, weights, ids, args.max_new_tokens, kv.build())
        report["plaintext_tokens"] = plain
        report["plaintext_text"] = tokenizer.decode(until_stop(plain, config.eos_token_ids))
        report["match"] = plain == result.tokens
        report["matching_prefix"] = next(
            (i for i, (a, b) in enumerate(zip(plain, result.tokens)) if a != b), len(plain)
        )
    if args.json:
        print(json.dumps(report))
    else:
        _print_human(report)
    return 0 if report.get("match", True) else 1


def _print_human(report: dict[str, Any]) -> None:
    print(f"private   : {report['text']!r}")
    _print_verdict(report, quote=True)
    _print_kv(report)
    latency = report["latency_s"]
    print(f"latency   : prefill {latency['prefill']} s ({report['prompt_tokens']} tokens), "
          f"decode {latency['decode_per_token']} s/token, total {latency['total']} s")
    _print_phase_costs(report, with_seconds=False)
