"""``pinfer bench ringmm``: ring products (int64, exact mod 2^64) at model shapes, torch's int64 kernel
against the float64-limb path of :mod:`pinfer.protocols.ring_matmul`, side by side in one run.

Operands are uniform over the ring, as opened masked values and shares are (a one-hot embedding row
is opened masked, so it is full-range too). Times are medians of ``--repeats`` calls after one warm-up,
wall clock and process CPU time; the int64 kernel is timed until ``--int64-seconds`` have passed (at
least once), since it takes tens of seconds on the largest shapes. Each row also checks that both
paths give the same product and says which one :func:`ring_matmul` takes at that shape. Threads
default to one, as every party and dealer process runs; the load average before and after is in the
report because the numbers mean little on a host that others share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinfer.bench.report import machine, table, write_json

# (label, rows, inner, columns): the products of a 128-token prefill and of a decode step.
SHAPES = (
    ("gpt2 mlp up, prefill", 128, 768, 3072),
    ("gpt2 mlp down, prefill", 128, 3072, 768),
    ("smollm2 mlp, prefill", 128, 576, 1536),
    ("smollm2 mlp, decode", 1, 576, 1536),
    ("smollm2 embed one-hot, prefill", 128, 49152, 576),
    ("smollm2 lm_head, decode", 1, 576, 49152),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ringmm", help="ring products: torch int64 vs float64 limbs, GMAC/s at model shapes")
    parser.add_argument("--out", type=Path, required=True, help="directory for ringmm.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (party processes use 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the limb path per shape")
    parser.add_argument("--int64-seconds", type=float, default=60.0,
                        help="stop timing the int64 kernel of a shape after this long (it runs at least once)")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="MxKxN",
                        help="products to time instead of the model shapes")
    parser.set_defaults(func=run)


def _shapes(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    if args.shapes is None:
        return list(SHAPES)
    shapes = []
    for text in args.shapes:
        try:
            rows, inner, cols = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes takes MxKxN, not {text!r}") from None
        shapes.append((text, rows, inner, cols))
    return shapes


def _timed(fn: Callable[[], Any], repeats: int, budget_s: float = float("inf")) -> dict[str, Any]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` calls (fewer once ``budget_s`` is spent)."""
    result = fn()
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < repeats and (not walls or time.perf_counter() - start < budget_s):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "runs": len(walls),
            "result": result}


def _measure(rows: int, inner: int, cols: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pinfer.protocols import ring_matmul as rm

    generator = torch.Generator().manual_seed(rows * 1_000_003 + inner * 1009 + cols)
    a = torch.randint(-(2**63), 2**63 - 1, (rows, inner), dtype=torch.int64, generator=generator)
    b = torch.randint(-(2**63), 2**63 - 1, (inner, cols), dtype=torch.int64, generator=generator)
    # the int64 kernel's warm-up call is a full product too: at most one more run than the budget says
    int64 = _timed(lambda: torch.matmul(a, b), args.repeats, args.int64_seconds)
    limb = _timed(lambda: rm.limb_matmul(a, b), args.repeats)
    macs = rows * inner * cols
    return {
        "rows": rows, "inner": inner, "cols": cols, "macs": macs,
        "exact": bool(torch.equal(int64.pop("result"), limb.pop("result"))),
        "int64": {**int64, "gmac_per_s": macs / int64["wall_s"] / 1e9},
        "limb": {**limb, "gmac_per_s": macs / limb["wall_s"] / 1e9},
        "speedup_wall": int64["wall_s"] / limb["wall_s"],
        "speedup_cpu": int64["cpu_s"] / limb["cpu_s"],
        "ring_matmul_path": "limb" if rm.limbs_win(a, b) else "int64",
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from pinfer.protocols import ring_matmul as rm

    shapes = _shapes(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        load_before = os.getloadavg()
        results = {}
        for label, rows, inner, cols in shapes:
            results[label] = _measure(rows, inner, cols, args)
            print(f"  {label}: done", flush=True)
        load_after = os.getloadavg()
        measured_threads = torch.get_num_threads()
        limbs_faster = rm.limbs_faster(torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    info = machine()
    print(f"Ring products mod 2^64 on {info['cpu']} ({info['cores']} cores, {info['device']}), "
          f"{measured_threads} torch thread(s); load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; wall-clock medians")
    print(table(
        ["product", "M x K x N", "int64 ms", "limb ms", "int64 GMAC/s", "limb GMAC/s", "speedup",
         "speedup cpu", "int64 runs", "exact", "ring_matmul"],
        [[label, f"{r['rows']}x{r['inner']}x{r['cols']}", r["int64"]["wall_s"] * 1e3, r["limb"]["wall_s"] * 1e3,
          r["int64"]["gmac_per_s"], r["limb"]["gmac_per_s"], r["speedup_wall"], r["speedup_cpu"],
          r["int64"]["runs"], "yes" if r["exact"] else "NO", r["ring_matmul_path"]] for label, r in results.items()]))
    path = write_json(args.out, "ringmm.json", {
        "machine": {**info, "torch_threads": measured_threads, "load_average_before": load_before,
                    "load_average_after": load_after},
        "settings": {"repeats": args.repeats, "int64_seconds": args.int64_seconds,
                     "limb_widths": rm.WIDTHS, "limb_offsets": rm.OFFSETS,
                     "exact_terms": rm.EXACT_TERMS, "block_elements": rm.BLOCK_ELEMENTS, "min_span": rm.MIN_SPAN,
                     "limb_min_rows": rm.LIMB_MIN_ROWS, "limb_min_macs": rm.LIMB_MIN_MACS},
        "limbs_faster": limbs_faster,
        "results": results,
    })
    print(f"ring_matmul's calibration ({'x'.join(map(str, rm.CALIBRATION_SHAPE))}) on this host: "
          f"{'float64 limbs' if limbs_faster else 'torch int64'} faster")
    print(f"wrote {path}")
    return 0 if all(r["exact"] for r in results.values()) else 1
