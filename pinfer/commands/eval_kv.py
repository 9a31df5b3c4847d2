"""``pinfer eval kv``: passkey retrieval and fidelity of KV policies on the plaintext backend.

Writes ``kv_eval.json`` (every record and the summary), ``kv_eval.png`` and prints a table. Records
are appended to ``kv_eval.jsonl`` as they finish, so a long grid can be watched and a crash loses
nothing that was already measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, table, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="accuracy evaluations")
    evals = parser.add_subparsers(dest="eval", required=True)
    kv = evals.add_parser("kv", help="KV policies: passkey retrieval and fidelity vs the full cache (plaintext)")
    kv.add_argument("--out", type=Path, required=True)
    kv.add_argument("--model", default="smollm2-135m")
    kv.add_argument("--policies", nargs="+", default=["streamingllm", "h2o", "snapkv", "tova", "quest", "mpcache"])
    kv.add_argument("--budgets", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    kv.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096], help="passkey prompt tokens")
    kv.add_argument("--depths", type=int, default=9, help="needle depths, evenly spaced over [0, 1]")
    kv.add_argument("--seeds", type=int, default=3)
    kv.add_argument("--fidelity-length", type=int, default=2048)
    kv.add_argument("--fidelity-steps", type=int, default=32)
    kv.add_argument("--fidelity-samples", type=int, default=3)
    kv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinfer.kvcache.accuracy import Runner, evaluate, grid, summarise
    from pinfer.models.registry import load_model

    config, weights, tokenizer = load_model(args.model)
    entries = grid(args.policies, args.budgets)
    depths = [i / (args.depths - 1) for i in range(args.depths)] if args.depths > 1 else [0.5]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "kv_eval.jsonl"
    log.write_text("")
    started = time.perf_counter()
    records: list[dict[str, Any]] = []

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {line}", flush=True)

    for record in evaluate(Runner(config, weights), tokenizer, entries, args.lengths, depths, range(args.seeds),
                           args.fidelity_length, args.fidelity_steps, args.fidelity_samples, progress):
        records.append(record)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
    rows = summarise(records, entries)
    headers = ["entry"] + [k for k in rows[0] if k.startswith("passkey_")] + ["passkey", "vs_full"]
    headers += [k for k in ("top1", "kl") if k in rows[0]]
    print(f"\n{args.model}, plaintext; passkey: {len(depths)} depths x {args.seeds} seeds per length; fidelity: "
          f"{args.fidelity_samples} x {args.fidelity_steps} teacher-forced steps after {args.fidelity_length} tokens")
    print(table(headers, [[row[h] for h in headers] for row in rows]))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    path = write_json(args.out, "kv_eval.json", {"machine": machine(), "settings": settings,
                                                  "summary": rows, "records": records})
    _plot(rows, args.out / "kv_eval.png")
    print(f"\nwrote {path}, {log} and {args.out / 'kv_eval.png'}")
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    full = next(r for r in rows if r["policy"] == "full")
    for key, ax, title in (("passkey", axes[0], "passkey hit rate"), ("top1", axes[1], "top-1 agreement with full"),
                           ("kl", axes[2], "mean KL(full || policy)")):
        if key not in full:
            continue
        for policy in dict.fromkeys(r["policy"] for r in rows if r["policy"] != "full"):
            mine = [r for r in rows if r["policy"] == policy]
            ax.plot([r["budget"] for r in mine], [r[key] for r in mine], marker="o", label=policy)
        if key == "passkey":
            ax.axhline(full[key], color="black", linestyle="--", label="full")
        ax.set_xlabel("budget (fraction of the prompt)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
