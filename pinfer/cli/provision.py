"""``pinfer provision``: split a model's weights into per-party share files sealed to each party's key."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("provision", help="seal per-party weight shares (run by the model owner)")
    parser.add_argument("--model", required=True, help="registry name or checkpoint directory")
    parser.add_argument("--parties", type=int, choices=(2, 3), default=2)
    parser.add_argument("--keys", required=True, help="key directory from `pinfer keys init` (party<i>/envelope.pub, and ca/ca.key to sign the card)")
    parser.add_argument("--out", required=True, help="directory; the model's files go to OUT/NAME/")
    parser.add_argument("--name", help="name clients ask for (default: --model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinfer import keys
    from pinfer.parties.share_store import provision

    try:
        party_keys = {i: keys.load_envelope_public_key(args.keys, keys.party_role(i)) for i in range(args.parties)}
        target = provision(args.model, args.out, party_keys, keys.load_ca_key(args.keys), name=args.name)
    except (OSError, ValueError, keys.KeyMaterialError) as exc:
        print(f"pinfer provision: {exc}", file=sys.stderr)
        return 2
    print(target)
    return 0
