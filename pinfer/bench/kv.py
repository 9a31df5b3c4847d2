"""``pinfer bench kv``: decode-step cost of KV policies on shares (latency, bytes, rounds by operator class).

Two parties and a dealer as local processes over mutual TLS (``--net`` emulates a LAN or WAN link).
For each model and cached length, every policy's cache is built by a *plaintext* prefill of essay
text and secret-shared (an MPC prefill at these lengths is too slow for this host; a decode step's
cost on shares does not depend on the cache's contents), then ``--steps`` decode steps run on shares,
each with the greedy arg-max; latencies are the median step. The model is truncated to ``--layers``
decoder layers and a full-depth token is extrapolated from a 0-layer run (see ``pinfer.kvcache.cost``).
Bytes and rounds are party 0's; kv-select is the policies' own selection work (scores, top-k,
gathers, eviction).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, pyplot, table, write_json

NETS = ("loopback", "lan", "wan")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("kv", help="KV policies on shares: decode latency, bytes, rounds")
    parser.add_argument("--out", type=Path, required=True, help="directory for kv_bench.json and kv_bench.png")
    parser.add_argument("--policies", nargs="+", default=["full", "streamingllm", "h2o", "snapkv", "tova", "quest", "mpcache"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gpt2-base"])
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--net", choices=NETS, default="loopback")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers actually run (then extrapolated)")
    parser.add_argument("--steps", type=int, default=2, help="decode steps per policy and length")
    parser.set_defaults(func=run)


def _emulation(net: str) -> Any:
    from pinfer.protocols import tls

    return {"loopback": None, "lan": tls.LAN, "wan": tls.WAN}[net]


def _measure_model(world: Any, model: str, args: argparse.Namespace, progress) -> list[dict[str, Any]]:
    from pinfer.model import norm_plan
    from pinfer.model.corpus import essay_ids
    from pinfer.model.decoder import prepare_weights
    from pinfer.model.generation import one_hot
    from pinfer.kvcache.cost import build_policy, job_decode_costs, per_step, plaintext_cache, totals, truncate
    from pinfer.model.registry import load_model, resolve
    from pinfer.protocols.sharing import share

    config, weights, tokenizer = load_model(model)
    shifts = norm_plan.for_model(resolve(model), config, weights, tokenizer)
    depth = config.n_layers
    ids_all = [i % config.vocab_size for i in essay_ids(tokenizer, max(args.lengths) + 1)]

    def run_job(cfg, prepared, start, labels_caches, token_id):
        skeletons = {label: skeleton for label, (skeleton, _) in labels_caches.items()}
        secret_bundles = {label: share(tensors, 2) for label, (_, tensors) in labels_caches.items()}
        tokens = share({"token": one_hot([token_id], cfg.vocab_size)}, 2)
        kwargs = [{"weights": w, "secrets": {label: b[rank] for label, b in secret_bundles.items()}, "token": tokens[rank]}
                  for rank, w in enumerate(share(prepared, 2))]
        return world.run(job_decode_costs, cfg, shifts, start, args.steps, skeletons, party_kwargs=kwargs)[0]

    outside_cfg, outside_weights = truncate(config, weights, 0)
    progress(f"{model}: the token's parts outside the decoder layers (0-layer model)")
    outside_prepared = prepare_weights(outside_cfg, outside_weights)
    result = run_job(outside_cfg, outside_prepared, 1,
                     {"outside": plaintext_cache(outside_cfg, outside_prepared, ids_all[:1], None)}, ids_all[1])
    outside = totals(per_step(result["costs"], "outside", args.steps))
    outside["seconds"] = statistics.median(result["seconds"]["outside"])

    cfg, cut = truncate(config, weights, args.layers)
    prepared = prepare_weights(cfg, cut)
    rows = []
    # The cache plus the decode steps must fit the model's positions (GPT-2: 1024).
    longest = config.max_positions - args.steps - 1
    lengths = sorted({min(length, longest) for length in args.lengths})
    if lengths != sorted(set(args.lengths)):
        progress(f"{model}: lengths capped at {longest} (context {config.max_positions}, {args.steps} decode steps)")
    for length in lengths:
        progress(f"{model}: {length} cached tokens, plaintext prefill for {len(args.policies)} policies")
        caches = {name: plaintext_cache(cfg, prepared, ids_all[:length], build_policy(name, args.budget))
                  for name in args.policies}
        progress(f"{model}: {length} cached tokens, decode on shares")
        result = run_job(cfg, prepared, length, caches, ids_all[length])
        for name in args.policies:
            by_op = per_step(result["costs"], name, args.steps)
            measured = totals(by_op)
            steps = result["seconds"][name]
            measured["seconds"] = statistics.median(steps)
            scale = depth / args.layers
            estimate = {k: outside[k] + (measured[k] - outside[k]) * scale for k in ("seconds", "bytes", "rounds")}
            rows.append({"model": model, "length": length, "policy": name, "budget": args.budget,
                         "layers_run": args.layers, "layers_model": depth, "step_seconds": steps,
                         "measured": measured, "by_operator": by_op, "full_depth_estimate": estimate})
    for row in rows:
        base = next(r for r in rows if r["model"] == model and r["length"] == row["length"] and r["policy"] == "full") \
            if "full" in args.policies else None
        if base is not None:
            row["vs_full"] = {k: base["full_depth_estimate"][k] / row["full_depth_estimate"][k]
                              for k in ("seconds", "bytes", "rounds")}
            row["vs_full_layers"] = {k: (base["measured"][k] - outside[k]) / (row["measured"][k] - outside[k])
                                     for k in ("seconds", "bytes")}
            row["vs_full_attention"] = {k: _attention_side(base, k) / _attention_side(row, k)
                                        for k in ("seconds", "bytes", "rounds")}
    return [{"outside": outside, "model": model}] + rows


ATTENTION_SIDE = ("attention", "softmax", "kv-select")
"""The operator classes a KV policy changes; the rest of a token (projections, MLP, norms, arg-max)
costs the same under every policy."""


def _attention_side(row: dict[str, Any], key: str) -> float:
    return sum(row["by_operator"].get(op, {}).get(key, 0) for op in ATTENTION_SIDE)


def run(args: argparse.Namespace) -> int:
    import time

    from pinfer.protocols.world import LocalWorld

    started = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)

    results: list[dict[str, Any]] = []
    with LocalWorld(n_parties=2, emulation=_emulation(args.net)) as world:
        for model in args.models:
            results += _measure_model(world, model, args, progress)
    rows = [r for r in results if "policy" in r]
    MiB = 2**20
    headers = ["model", "cached", "policy", f"s/step ({args.layers} L)", "MiB/step", "rounds/step",
               "kv-sel MiB", "kv-sel rounds", "est s/token", "est MiB/token", "latency x", "comm x", "layers lat x", "layers comm x",
               "attn lat x", "attn comm x", "attn rounds x"]
    body = []
    for r in rows:
        m, e, sel = r["measured"], r["full_depth_estimate"], r["by_operator"].get("kv-select", {})
        vs, vsl, vsa = r.get("vs_full", {}), r.get("vs_full_layers", {}), r.get("vs_full_attention", {})
        body.append([r["model"], r["length"], r["policy"], m["seconds"], m["bytes"] / MiB, int(m["rounds"]),
                     sel.get("bytes", 0) / MiB, int(sel.get("rounds", 0)), e["seconds"], e["bytes"] / MiB,
                     vs.get("seconds", float("nan")), vs.get("bytes", float("nan")),
                     vsl.get("seconds", float("nan")), vsl.get("bytes", float("nan")),
                     vsa.get("seconds", float("nan")), vsa.get("bytes", float("nan")), vsa.get("rounds", float("nan"))])
    info = machine()
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores; 2 parties + dealer, net {args.net}; budget {args.budget:g}; "
          f"cache built by a plaintext prefill, then shared (no MPC prefill); {args.layers} decoder layers run, "
          f"'est' = full depth extrapolated from a 0-layer run; 'x' = full cache / policy (token); "
          f"'layers x' = the same over the decoder layers only; 'attn x' = over attention + softmax + kv-select")
    print(table(headers, body))
    ops_rows = [[r["model"], r["length"], r["policy"], op, c["seconds"], c["bytes"] / MiB, int(c["rounds"])]
                for r in rows for op, c in sorted(r["by_operator"].items())]
    print(f"\nby operator class (party 0, per decode step of the {args.layers}-layer model)")
    print(table(["model", "cached", "policy", "operator", "s", "MiB", "rounds"], ops_rows))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    path = write_json(args.out, "kv_bench.json", {"machine": info, "settings": settings, "results": results,
                                                   "note": "cache built by a plaintext prefill and secret-shared"})
    drawn = _plot(rows, args.out / "kv_bench.png")
    print(f"\nwrote {path}" + (f" and {args.out / 'kv_bench.png'}" if drawn else ""))
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> bool:
    plt = pyplot(path)
    if plt is None:
        return False

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    for row_axes, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        for policy in dict.fromkeys(r["policy"] for r in mine):
            pts = [r for r in mine if r["policy"] == policy]
            lengths = [r["length"] for r in pts]
            row_axes[0].plot(lengths, [r["full_depth_estimate"]["seconds"] for r in pts], marker="o", label=policy)
            row_axes[1].plot(lengths, [r["full_depth_estimate"]["bytes"] / 2**20 for r in pts], marker="o", label=policy)
        for ax, title in zip(row_axes, ("est. s per token", "est. MiB per token (party 0)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("cached tokens")
            ax.set_title(f"{model}: {title}")
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
