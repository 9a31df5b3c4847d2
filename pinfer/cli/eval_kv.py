"""``pinfer eval kv``: passkey retrieval and fidelity of KV policies on the plaintext backend.

Writes ``kv_eval.json`` (every record and the summary), ``kv_eval.png`` and prints a table. Records
are appended to ``kv_eval.jsonl`` as they finish, so a long grid can be watched and a crash loses
nothing that was already measured.

``--device cuda`` runs the plaintext backend on a GPU (fp32, no TF32). ``--save-prompts FILE`` writes
the grid's prompts as token ids (JSON) and ``--prompts FILE`` replays them instead of tokenizing the
corpus, so the same prompts can run on a machine without the corpus.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, pyplot, table, write_json


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
    kv.add_argument("--fidelity-samples", type=int, default=10, help="essay samples of --fidelity-steps teacher-forced steps each")
    kv.add_argument("--device", default="cpu", help="torch device of the plaintext backend (cpu, cuda, cuda:1...)")
    kv.add_argument("--prompts", type=Path, help="replay prompts (token ids) saved by --save-prompts")
    kv.add_argument("--save-prompts", type=Path, help="also write the grid's prompts as token ids to this file")
    kv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinfer.kvcache.accuracy import (RecordedPrompts, Runner, TokenizedPrompts, evaluate, grid, record_prompts,
                                         work_items)
    from pinfer.model.registry import load_model

    config, weights, tokenizer = load_model(args.model)
    entries = grid(args.policies, args.budgets)
    depths = [i / (args.depths - 1) for i in range(args.depths)] if args.depths > 1 else [0.5]
    prompts = RecordedPrompts.load(args.prompts) if args.prompts else TokenizedPrompts(tokenizer)
    if args.save_prompts:
        items = work_items(args.lengths, depths, range(args.seeds), args.fidelity_length, args.fidelity_steps,
                           args.fidelity_samples)
        record_prompts(prompts, items).save(args.save_prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "kv_eval.jsonl"
    log.write_text("")
    started = time.perf_counter()
    records: list[dict[str, Any]] = []

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {line}", flush=True)

    runner = Runner(config, weights, args.device)
    for record in evaluate(runner, prompts, entries, args.lengths, depths, range(args.seeds),
                           args.fidelity_length, args.fidelity_steps, args.fidelity_samples, progress):
        records.append(record)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    report(args.out, args.model, entries, records, settings, machine())
    print(f"wrote {args.out / 'kv_eval.json'}, {log} and {args.out / 'kv_eval.png'}")
    return 0


def report(out: Path, model: str, entries: list[Any], records: list[dict[str, Any]], settings: dict[str, Any],
           host: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Summarise ``records``: print the table (returned too), write ``kv_eval.json`` and ``kv_eval.png``."""
    from pinfer.kvcache.accuracy import summarise

    rows = summarise(records, entries)
    headers = ["entry"] + [k for k in rows[0] if k.startswith("passkey_")] + ["passkey", "vs_full"]
    headers += [k for k in ("top1", "kl") if k in rows[0]]
    n_depths = settings["depths"]
    text = (f"\n{model}, plaintext on {settings.get('device', 'cpu')} ({host.get('device', '?')}); passkey: "
            f"{n_depths} depths x {settings['seeds']} seeds per length; fidelity: {settings['fidelity_samples']} x "
            f"{settings['fidelity_steps']} teacher-forced steps after {settings['fidelity_length']} tokens\n"
            + table(headers, [[row[h] for h in headers] for row in rows]) + "\n")
    print(text)
    write_json(out, "kv_eval.json", {"machine": host, "settings": settings, **(extra or {}), "summary": rows,
                                     "records": records})
    _plot(rows, out / "kv_eval.png")
    return text


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot(path)
    if plt is None:
        return

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
