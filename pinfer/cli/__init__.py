"""The ``pinfer`` command line.

Each command lives in its own module of this package exposing ``register(subparsers)``; that function adds its parser
and sets ``func`` to a callable taking the parsed namespace and returning an exit code. Modules are
imported when the parser is built; keep their top-level imports light (heavy ones go inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

_COMMAND_MODULES = (
    "pinfer.cli.generate",
    "pinfer.cli.keys",
    "pinfer.cli.provision",
    "pinfer.cli.node",
    "pinfer.cli.orchestrator",
    "pinfer.cli.up",
    "pinfer.cli.serve_openai",
    "pinfer.cli.eval_kv",
)
_BENCH_MODULES = (
    "pinfer.bench.accel",
    "pinfer.bench.generate",
    "pinfer.bench.agreement",
    "pinfer.bench.envelope",
    "pinfer.bench.kv",
    "pinfer.bench.nonlinear",
    "pinfer.bench.ringmm",
    "pinfer.bench.service",
    "pinfer.bench.truncation",
)


def _register_all(subparsers: argparse._SubParsersAction, modules: Sequence[str]) -> None:
    for name in modules:
        importlib.import_module(name).register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinfer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _register_all(commands, _COMMAND_MODULES)
    bench = commands.add_parser("bench", help="benchmarks: print a table, write JSON (and PNG) to --out")
    benches = bench.add_subparsers(dest="bench", required=True)
    _register_all(benches, _BENCH_MODULES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
