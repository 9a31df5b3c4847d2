"""``pinfer bench envelope``: what the post-quantum hybrid KEM costs a request, beside X25519.

Both KEMs seal in one run, interleaved, over the payloads a request really seals: a SmolLM2 party-0
input (one-hot share rows of a ``--prompt``-token prompt), a party-1 seed, and one token share under
a reply key (the same for both KEMs: symmetric). Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from pinfer.bench.report import machine, table, write_json

SMOLLM2_VOCAB = 49152


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("envelope", help="HPKE seal/open time and bytes: MLKEM768-X25519 vs X25519")
    parser.add_argument("--out", type=Path, required=True, help="directory for envelope.json")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens of the party-0 input")
    parser.add_argument("--repeats", type=int, default=9)
    parser.set_defaults(func=run)


def _median_s(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    from pinfer.keys import envelope, session

    payloads = {"party-0 input": os.urandom(8 * args.prompt * SMOLLM2_VOCAB), "party-1 seed": os.urandom(32)}
    context = envelope.EnvelopeContext("0" * 32, 0, "input-share")
    rows, results = [], []
    keys = {kem: envelope.PrivateKey.generate(kem) for kem in envelope.Kem}
    for name, payload in payloads.items():
        for kem, private in keys.items():
            public = private.public_key()
            sealed = envelope.seal(payload, public, context)
            seal_s = _median_s(lambda: envelope.seal(payload, public, context), args.repeats)
            open_s = _median_s(lambda: envelope.open_envelope(sealed, private, context), args.repeats)
            overhead = len(sealed) - len(payload)
            rows.append([name, kem.label, len(payload), overhead, seal_s * 1e3, open_s * 1e3])
            results.append({"payload": name, "kem": kem.label, "payload_bytes": len(payload),
                            "overhead_bytes": overhead, "seal_ms": seal_s * 1e3, "open_ms": open_s * 1e3})
    reply = session.ReplyKey(os.urandom(32), "0" * 32, 0)
    share = session.TokenShare(1 << 40, 0.5, 10 << 20, 200, 1 << 20)
    token = reply.seal(1, share)
    seal_s = _median_s(lambda: reply.seal(1, share), args.repeats * 10)
    open_s = _median_s(lambda: reply.open(1, token), args.repeats * 10)
    rows.append(["token share", "reply key (either)", len(token) - 16, 16, seal_s * 1e3, open_s * 1e3])
    results.append({"payload": "token share", "kem": "reply key", "payload_bytes": len(token) - 16,
                    "overhead_bytes": 16, "seal_ms": seal_s * 1e3, "open_ms": open_s * 1e3})
    by = {(r["payload"], r["kem"]): r for r in results}
    ratio = by[("party-0 input", "MLKEM768-X25519")]["seal_ms"] / by[("party-0 input", "X25519")]["seal_ms"]
    info = machine()
    print(f"HPKE envelopes (HKDF-SHA256, ChaCha20-Poly1305) on {info['cpu']} ({info['cores']} cores, "
          f"{info['device']}), medians of {args.repeats}")
    print(table(["payload", "KEM", "payload B", "overhead B", "seal ms", "open ms"], rows))
    print(f"party-0 input ({args.prompt} tokens) seal time, MLKEM768-X25519 / X25519: {ratio:.3f}x")
    path = write_json(args.out, "envelope.json", {"machine": info, "settings": {"prompt": args.prompt, "repeats": args.repeats},
                                                  "results": results, "seal_ratio_party0": ratio})
    print(f"wrote {path}")
    return 0
