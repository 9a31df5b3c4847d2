"""``pinfer bench nonlinear``: rounds, online bytes, dealer bytes and max error of each MPC
non-linearity at model shapes, with FSS comparisons and with the carry tree, side by side in one run;
then local against exact truncation (rounds, bytes, failures counted) at three magnitudes.

Two parties and a dealer as local processes. Online bytes are party 0's as CrypTen counts them (sent
plus received on the party link); dealer bytes are what the dealer sent both parties (tuple
corrections and FSS keys: the offline material, which a deployment can make ahead of the request).
The inputs cover each function's measured domain (``docs/approximations.md``): exp on [-16, 0], SiLU
and GeLU on [-64, 64], a decode softmax row of ``--cached`` scores for SmolLM2's 9 heads, the
reciprocal of softmax denominators, rsqrt over its documented range, RMSNorm rows of 576, and an
arg-max over SmolLM2's 49,152-entry vocabulary.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, table, write_json

SOFTMAX_HEADS = 9
HIDDEN = 576
VOCABULARY = 49152
METHODS = ("carry-tree", "fss")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nonlinear", help="MPC non-linearities: rounds, online and dealer bytes, max error; FSS vs carry tree")
    parser.add_argument("--out", type=Path, required=True, help="directory for nonlinear.json")
    parser.add_argument("--elements", type=int, default=4096, help="elements for comparison, exp, SiLU and GeLU")
    parser.add_argument("--cached", type=int, default=2048, help="scores per softmax row (one decode step)")
    parser.add_argument("--rows", type=int, default=16, help="RMSNorm rows of 576")
    parser.add_argument("--vocabulary", type=int, default=VOCABULARY, help="arg-max row length")
    parser.add_argument("--truncations", type=int, default=1 << 16, help="products per magnitude in the truncation rows")
    parser.set_defaults(func=run)


def _row_scales(rows: int) -> Any:
    import torch

    return torch.exp2(torch.linspace(-4, 6, rows))


def _calls(rows: int) -> dict[str, Any]:
    import torch

    from pinfer.model.norm_plan import norm_shift
    from pinfer.protocols import comparison, nonlinear

    # per-row shifts as the norm plan derives them (a margin of 2 over the rows' mean squares)
    shifts = torch.tensor([norm_shift(2 * float(s) ** 2, HIDDEN) for s in _row_scales(rows)])

    return {
        "ltz (32-bit)": lambda v: comparison.ltz(v, 32),
        "exp": nonlinear.exp,
        "silu": nonlinear.silu,
        "gelu": nonlinear.gelu,
        "softmax (decode row)": lambda v: nonlinear.softmax(v, dim=-1),
        "reciprocal [1, n]": lambda v: nonlinear.reciprocal(v, lo=0.5, hi=float(2**16)),
        "rsqrt": nonlinear.rsqrt,
        "rms_normalize": lambda v: nonlinear.rms_normalize(v, 1e-5, shift=shifts),
        "argmax_onehot": lambda v: nonlinear.argmax_onehot(v, spread=2.0**14),
    }


def job_costs(ctx: Any, method: str, rows: int, inputs: Any) -> dict[str, dict[str, Any]]:
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor

    from pinfer.protocols import comparison
    from pinfer.protocols.sharing import FRACTIONAL_BITS

    calls = _calls(rows)
    stats, dealer = comm.get(), ctx.provider.channel.stats
    out = {}
    with comparison.using(method):
        for name, share in inputs.consume():
            x = MPCTensor.from_shares(share, precision=FRACTIONAL_BITS)
            before = (stats.comm_bytes, stats.comm_rounds, dealer.bytes_received)
            result = calls[name](x)
            after = (stats.comm_bytes, stats.comm_rounds, dealer.bytes_received)
            out[name] = {"bytes": after[0] - before[0], "rounds": after[1] - before[1],
                         "dealer_bytes": after[2] - before[2], "elements": share.numel(),
                         "value": result._tensor.reveal() if name.startswith("ltz") else result.get_plain_text()}
    return out


TRUNCATION_MAGNITUDES_LOG2 = (0, 20, 26)
"""Real magnitudes |v| < 2^m of the truncated products (scale 2^32): local truncation fails with
probability about |v| 2^-32, i.e. visibly often only for large v; the exact protocol never."""


def job_truncation(ctx: Any, elements: int) -> list[dict[str, Any]]:
    """Local and exact truncation by 16 bits of products V = v 2^32 at each magnitude: rounds, bytes,
    dealer bytes and how many results are off by more than one unit."""
    import crypten.communicator as comm
    import torch

    from pinfer.protocols.truncation import truncate

    stats, dealer = comm.get(), ctx.provider.channel.stats
    rank = comm.get().get_rank()
    rows = []
    for m in TRUNCATION_MAGNITUDES_LOG2:
        gen = torch.Generator().manual_seed(m)  # the same values and split on both parties
        values = ((torch.rand(elements, generator=gen, dtype=torch.float64) * 2 - 1) * 2.0 ** (m + 32)).long()
        other = torch.randint(-2**63, 2**63 - 1, (elements,), generator=gen, dtype=torch.long)
        share = values - other if rank == 0 else other
        floor = values >> 16
        row: dict[str, Any] = {"magnitude_log2": m, "elements": elements}
        for method in ("local", "exact"):
            before = (stats.comm_bytes, stats.comm_rounds, dealer.bytes_received)
            out = share >> 16 if method == "local" else truncate(share, 16, ctx.provider)
            after = (stats.comm_bytes, stats.comm_rounds, dealer.bytes_received)
            result = comm.get().all_reduce(out)
            row[method] = {"bytes": after[0] - before[0], "rounds": after[1] - before[1],
                           "dealer_bytes": after[2] - before[2],
                           "failures": int(((result - floor).abs() > 1).sum())}
        rows.append(row)
    return rows


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    n = args.elements
    return {
        "ltz (32-bit)": torch.linspace(-2**14, 2**14, n),
        "exp": -16 * torch.rand(n, generator=gen),
        "silu": torch.linspace(-64, 64, n),
        "gelu": torch.linspace(-64, 64, n),
        "softmax (decode row)": 4 * torch.randn(SOFTMAX_HEADS, 1, args.cached, generator=gen),
        "reciprocal [1, n]": torch.exp2(16 * torch.rand(SOFTMAX_HEADS, generator=gen)),
        "rsqrt": torch.exp2(torch.linspace(-12, 24, 64)),
        "rms_normalize": torch.randn(args.rows, HIDDEN, generator=gen) * _row_scales(args.rows)[:, None],
        "argmax_onehot": 6 * torch.randn(1, args.vocabulary, generator=gen),
    }


def _reference(name: str, x: Any) -> Any:
    import torch

    x = torch.round(x.double() * 2**16) / 2**16  # the encoded input the parties hold (sharing.encode)
    if name.startswith("ltz"):
        return (x < 0).double()
    if name == "exp":
        return torch.exp(x)
    if name == "silu":
        return torch.nn.functional.silu(x)
    if name == "gelu":
        return torch.nn.functional.gelu(x, approximate="tanh")
    if name.startswith("softmax"):
        return torch.softmax(x, dim=-1)
    if name.startswith("reciprocal"):
        return 1.0 / x
    if name == "rsqrt":
        return x.rsqrt()
    if name == "rms_normalize":
        return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + 1e-5)
    if name == "argmax_onehot":
        return torch.zeros_like(x).scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0)
    raise ValueError(name)


def run(args: argparse.Namespace) -> int:
    from pinfer.protocols.sharing import share
    from pinfer.protocols.world import LocalWorld

    inputs = _inputs(args)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with LocalWorld(n_parties=2) as world:
        for method in METHODS:
            parties = world.run(job_costs, method, args.rows, party_kwargs=[{"inputs": b} for b in share(inputs, 2)])
            for name, cost in parties[0].items():
                error = (cost.pop("value").double() - _reference(name, inputs[name])).abs().max().item()
                cost["dealer_bytes"] += parties[1][name]["dealer_bytes"]
                cost["max_abs_error"] = error
                results.setdefault(name, {})[method] = cost
        truncation = world.run(job_truncation, args.truncations)
    for row, other in zip(truncation[0], truncation[1]):
        for method in ("local", "exact"):
            row[method]["dealer_bytes"] += other[method]["dealer_bytes"]
    rows = []
    for name, by_method in results.items():
        tree, fss = by_method["carry-tree"], by_method["fss"]
        rows.append([name, tree["elements"], tree["rounds"], fss["rounds"], tree["bytes"] / tree["elements"],
                     fss["bytes"] / fss["elements"], tree["dealer_bytes"] / tree["elements"],
                     fss["dealer_bytes"] / fss["elements"], tree["max_abs_error"], fss["max_abs_error"]])
    info = machine()
    print(f"MPC non-linearities, 2 parties + dealer on {info['cpu']} ({info['cores']} cores, {info['device']}); "
          "online B = party 0 sent + received, dealer B = sent to both parties")
    print(table(["function", "elements", "rounds tree", "rounds fss", "online B/el tree", "online B/el fss",
                 "dealer B/el tree", "dealer B/el fss", "max err tree", "max err fss"], rows))
    print("\ntruncation of products v 2^32 by 16 bits: local (each party shifts its share) against "
          "exact (pinfer.protocols.truncation); failures = results off by more than one unit")
    print(table(["|v| <", "elements", "rounds local", "rounds exact", "online B/el local", "online B/el exact",
                 "dealer B/el exact", "failures local", "failures exact"],
                [[f"2^{r['magnitude_log2']}", r["elements"], r["local"]["rounds"], r["exact"]["rounds"],
                  r["local"]["bytes"] / r["elements"], r["exact"]["bytes"] / r["elements"],
                  r["exact"]["dealer_bytes"] / r["elements"], r["local"]["failures"], r["exact"]["failures"]]
                 for r in truncation[0]]))
    path = write_json(args.out, "nonlinear.json", {
        "machine": info, "settings": {"elements": args.elements, "cached": args.cached, "rows": args.rows,
                                      "vocabulary": args.vocabulary, "truncations": args.truncations},
        "truncation": truncation[0],
        "results": {name: {m: {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                               for k, v in c.items()} for m, c in by.items()} for name, by in results.items()}})
    print(f"wrote {path}")
    return 0
