"""``pinfer keys init``: create the CA, role certificates and party envelope keys of a deployment.

Kept apart from :mod:`pinfer.keys` so the library has no argument-parsing concerns; this module only
turns command-line text into an :func:`pinfer.keys.init_keys` call and prints the public summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pinfer import keys
from pinfer.keys import envelope


def _parse_node_hosts(specs: list[str]) -> dict[str, list[str]]:
    """``ROLE=HOST[,HOST...]`` entries into a role -> host names mapping."""
    hosts: dict[str, list[str]] = {}
    for spec in specs:
        role, sep, names = spec.partition("=")
        if not sep or not role or not names:
            raise argparse.ArgumentTypeError(f"--nodes entries look like ROLE=HOST[,HOST...], got {spec!r}")
        hosts.setdefault(role, []).extend(n for n in names.split(",") if n)
    return hosts


def _init(args: argparse.Namespace) -> int:
    try:
        node_hosts = _parse_node_hosts(args.nodes)
        for host in args.hostname:
            for role in keys.node_roles(args.parties):
                node_hosts.setdefault(role, []).append(host)
        manifest = keys.init_keys(args.out, args.parties, node_hosts, validity_days=args.days, overwrite=args.force,
                                  kem=envelope.Kem.from_label(args.kem))
    except (ValueError, argparse.ArgumentTypeError, keys.KeyMaterialError) as exc:
        print(f"pinfer keys init: {exc}", file=sys.stderr)
        return 2
    layout = keys.KeyDir(Path(args.out))
    print(f"key directory: {layout.root}")
    print(f"CA certificate: {layout.ca_cert} (sha256 {manifest.ca_fingerprint[:16]}...)")
    print(f"CA private key: {layout.ca_key} (keep offline; no node needs it; provisioning signs model cards with it)")
    print(f"deployment statement: {layout.deployment} (CA-signed party keys; the orchestrator serves it)")
    print(f"clients need only {layout.ca_cert}: pinfer generate --endpoint ... --ca {layout.ca_cert}")
    for role in manifest.roles:
        extra = ", ".join(manifest.hostnames.get(role, ())) or "-"
        line = f"  {role:<13} {layout.node_dir(role)}/  extra hosts: {extra}"
        if role in manifest.envelope_public_keys:
            line += f"  envelope key {manifest.envelope_public_keys[role].hex()[:16]}..."
        print(line)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``keys`` with its ``init`` subcommand."""
    parser = subparsers.add_parser("keys", help="deployment keys and certificates")
    actions = parser.add_subparsers(dest="keys_command", required=True)
    init = actions.add_parser(
        "init",
        help="create a CA, per-node role certificates, the parties' envelope keys and the signed deployment statement",
        description="Create a key directory: CA, one certificate per node role (orchestrator, party0.., "
        "dealer, client), each party's HPKE envelope key pair and the CA-signed deployment statement naming "
        "them. Private keys are written 0600.",
    )
    init.add_argument("--out", required=True, type=Path, help="directory to create the keys in")
    init.add_argument("--parties", type=int, default=2, choices=range(keys.MIN_PARTIES, keys.MAX_PARTIES + 1),
                      help="number of compute parties (default 2)")
    init.add_argument("--nodes", nargs="*", default=[], metavar="ROLE=HOST[,HOST...]",
                      help="extra DNS names/IPs for a node's certificate, e.g. party0=pinfer-party0.example; "
                      "each certificate always covers its role name, and may not carry another role's name")
    init.add_argument("--hostname", action="append", default=[], metavar="HOST",
                      help="extra DNS name/IP added to every node's certificate (repeatable)")
    init.add_argument("--days", type=int, default=keys.DEFAULT_VALIDITY_DAYS, help="certificate validity in days")
    init.add_argument("--force", action="store_true", help="replace keys already in --out")
    init.add_argument("--kem", choices=[k.label for k in envelope.Kem], default=envelope.DEFAULT_KEM.label,
                      help="HPKE KEM of the parties' envelope keys (default: the post-quantum hybrid)")
    init.set_defaults(func=_init)
