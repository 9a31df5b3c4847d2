"""``pinfer bench nonlinear``: rounds and bytes per element of the MPC non-linearities at model shapes.

Two parties and a dealer as local processes; party 0's traffic. The inputs cover each function's
measured domain (``docs/approximations.md``): exp on [-16, 0], SiLU and GeLU on [-64, 64], a decode
softmax row of ``--cached`` scores per head for SmolLM2's 9 heads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, table, write_json

SOFTMAX_HEADS = 9


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("nonlinear", help="MPC exp, SiLU, GeLU, softmax: rounds and bytes per element")
    parser.add_argument("--out", type=Path, required=True, help="directory for nonlinear.json")
    parser.add_argument("--elements", type=int, default=4096, help="elements for exp, SiLU and GeLU")
    parser.add_argument("--cached", type=int, default=2048, help="scores per softmax row (one decode step)")
    parser.set_defaults(func=run)


def job_costs(ctx: Any, inputs: Any) -> dict[str, dict[str, int]]:
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor

    from pinfer.protocols import nonlinear

    calls = {"exp": nonlinear.exp, "silu": nonlinear.silu, "gelu": nonlinear.gelu,
             "softmax": lambda v: nonlinear.softmax(v, dim=-1)}
    stats = comm.get()
    out = {}
    for name, share in inputs.consume():
        x = MPCTensor.from_shares(share, precision=16)
        bytes_before, rounds_before = stats.comm_bytes, stats.comm_rounds
        calls[name](x)
        out[name] = {"bytes": stats.comm_bytes - bytes_before, "rounds": stats.comm_rounds - rounds_before,
                     "elements": share.numel()}
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from pinfer.protocols.sharing import share
    from pinfer.protocols.world import LocalWorld

    gen = torch.Generator().manual_seed(0)
    inputs = {"exp": -16 * torch.rand(args.elements, generator=gen),
              "silu": torch.linspace(-64, 64, args.elements),
              "gelu": torch.linspace(-64, 64, args.elements),
              "softmax": 4 * torch.randn(SOFTMAX_HEADS, 1, args.cached, generator=gen)}
    with LocalWorld(n_parties=2) as world:
        costs = world.run(job_costs, party_kwargs=[{"inputs": b} for b in share(inputs, 2)])[0]
    rows = [[name, list(inputs[name].shape), c["rounds"], c["bytes"] / 2**20, c["bytes"] / c["elements"]]
            for name, c in costs.items()]
    info = machine()
    print(f"MPC non-linearities, 2 parties + dealer on {info['cpu']} ({info['cores']} cores), party 0's traffic")
    print(table(["function", "shape", "rounds", "MiB sent", "B/element"], rows))
    path = write_json(args.out, "nonlinear.json", {"machine": info, "settings": {"elements": args.elements,
                      "cached": args.cached}, "results": costs})
    print(f"wrote {path}")
    return 0
