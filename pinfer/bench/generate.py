"""``pinfer bench generate``: private prefill and decode cost on this machine, by operator class.

Each configuration runs one private generation (two parties and a dealer as local processes on
loopback): a prompt of the given length cut from a Paul Graham essay, then ``--decode-tokens`` greedy
tokens. Latency is party 0's wall time; bytes and rounds are what each party sent to the other, and
dealer bytes are the correlated randomness (offline material) party 0 received.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, pyplot, table, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="private prefill/decode latency, bytes and rounds")
    parser.add_argument("--out", type=Path, required=True, help="directory for generate.json and generate.png")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gpt2-base"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 128],
                        help="prompt lengths for the first model; later models use the last length")
    parser.add_argument("--decode-tokens", type=int, default=4)
    parser.set_defaults(func=run)


def _measure(model: str, length: int, decode_tokens: int) -> dict[str, Any]:
    from pinfer.model import norm_plan
    from pinfer.model.corpus import essay_ids
    from pinfer.model.registry import load_model, resolve
    from pinfer.service.private import generate_private

    config, weights, tokenizer = load_model(model)
    shifts = norm_plan.for_model(resolve(model), config, weights, tokenizer)
    ids = [i % config.vocab_size for i in essay_ids(tokenizer, length)]
    result = generate_private(config, weights, ids, decode_tokens, shifts)
    by_phase = {}
    for phase in ("setup", "prefill", "decode"):
        ops = result.party_costs[0].get(phase, {})
        scale = max(decode_tokens - 1, 1) if phase == "decode" else 1
        by_phase[phase] = {op: {k: v / scale for k, v in cost.items()} for op, cost in ops.items()}
    return {
        "model": model,
        "layers": config.n_layers,
        "prompt_tokens": length,
        "decode_tokens": decode_tokens,
        "prefill_seconds": result.prefill_seconds,
        "decode_seconds_per_token": result.decode_seconds_per_token,
        "per_party": {
            phase: result.phase_totals(phase) for phase in ("setup", "prefill", "decode")
        },
        "party0_by_operator": by_phase,
    }


def run(args: argparse.Namespace) -> int:
    runs = []
    plan = [(args.models[0], length) for length in args.lengths]
    plan += [(model, args.lengths[-1]) for model in args.models[1:]]
    for model, length in plan:
        print(f"running {model} with a {length}-token prompt and {args.decode_tokens} new tokens ...", flush=True)
        runs.append(_measure(model, length, args.decode_tokens))
    rows = []
    for r in runs:
        steps = max(r["decode_tokens"] - 1, 1)
        prefill, decode = r["per_party"]["prefill"][0], r["per_party"]["decode"][0]
        rows.append([
            r["model"], r["prompt_tokens"], r["prefill_seconds"], prefill["bytes"] / 2**20, prefill["rounds"],
            r["decode_seconds_per_token"] or float("nan"), decode["bytes"] / steps / 2**20,
            decode["rounds"] // steps, decode["dealer_bytes"] / steps / 2**20,
        ])
    info = machine()
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, device {info['device']}; 2 parties + dealer on loopback")
    print(table(["model", "prompt", "prefill s", "prefill MiB", "prefill rounds", "decode s/tok",
                 "decode MiB/tok", "decode rounds/tok", "dealer MiB/tok"], rows))
    op_rows = []
    for r in runs:
        for phase in ("prefill", "decode"):
            for op, cost in sorted(r["party0_by_operator"][phase].items()):
                op_rows.append([r["model"], r["prompt_tokens"], phase, op, cost["seconds"],
                                cost["bytes"] / 2**20, cost["rounds"], cost["dealer_bytes"] / 2**20])
    print("\nby operator class (party 0; decode rows are per token)")
    print(table(["model", "prompt", "phase", "operator", "s", "MiB", "rounds", "dealer MiB"], op_rows))
    path = write_json(args.out, "generate.json", {"machine": info, "runs": runs})
    drawn = _plot(runs, args.out / "generate.png")
    print(f"\nwrote {path}" + (f" and {args.out / 'generate.png'}" if drawn else ""))
    return 0


def _plot(runs: list[dict[str, Any]], path: Path) -> bool:
    plt = pyplot(path)
    if plt is None:
        return False

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['model']}\n{r['prompt_tokens']} tok {phase}" for r in runs for phase in ("prefill", "decode")]
    operators = sorted({op for r in runs for phase in ("prefill", "decode") for op in r["party0_by_operator"][phase]})
    for ax, key, title in ((axes[0], "seconds", "party 0 time (s)"), (axes[1], "bytes", "party 0 MiB sent")):
        bottom = [0.0] * len(labels)
        for op in operators:
            values = [r["party0_by_operator"][phase].get(op, {}).get(key, 0) / (2**20 if key == "bytes" else 1)
                      for r in runs for phase in ("prefill", "decode")]
            ax.bar(range(len(labels)), values, bottom=bottom, label=op)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title + " (decode: per token)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
