"""Move a policy cache built in plaintext onto shares: the cost bench's stand-in for an MPC prefill.

An MPC prefill of thousands of tokens is far too slow for a 2-core host, and a decode step's cost on
shares does not depend on the cache's contents (every selection is oblivious: same operations, same
traffic, whatever the data), only on its public shape. So the bench prefills in plaintext, splits the
resulting cache tree into a public skeleton and its tensors (after a prefill every tensor a policy
cache holds is secret: keys, values, scores, keep bits, selections), secret-shares the tensors, and
each party rebuilds the same tree over its shares and the MPC backend. Shared references (MPCache's
cross-layer board) stay shared.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pinfer.model.plain_ops import PlainKVLayer, PlainOps


@dataclass(frozen=True)
class _Secret:
    name: str


@dataclass(frozen=True)
class _SecretLayer:
    keys: str | None  # None: an empty (or released) layer
    values: str | None


class _Backend:
    """Where the skeleton held the plaintext backend's ops."""


_NOT_A_LEAF = object()


def _rebuild(tree: Any, leaf: Callable[[Any, Callable[[Any], Any]], Any], copy_objects: bool) -> Any:
    """``tree`` rebuilt with ``leaf(node, walk)`` in place of every node it knows.

    ``leaf`` returns :data:`_NOT_A_LEAF` for a node it does not replace: lists, tuples and dicts are then
    rebuilt, and an object gets its attributes replaced, in a copy with ``copy_objects`` and in place
    otherwise. A node reached twice maps to the same result, so shared references stay shared.
    """
    memo: dict[int, Any] = {}

    def walk(node: Any) -> Any:
        if id(node) in memo:
            return memo[id(node)]
        out = leaf(node, walk)
        if out is _NOT_A_LEAF:
            if isinstance(node, list):
                out = [walk(x) for x in node]
            elif isinstance(node, tuple):
                out = tuple(walk(x) for x in node)
            elif isinstance(node, dict):
                out = {k: walk(v) for k, v in node.items()}
            elif hasattr(node, "__dict__") and not isinstance(node, type):
                out = copy.copy(node) if copy_objects else node
                memo[id(node)] = out  # before its attributes, so a reference back to the object finds it
                for key, value in vars(node).items():
                    object.__setattr__(out, key, walk(value))
            else:
                out = node
        memo[id(node)] = out
        return out

    return walk(tree)


def split_secrets(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A public skeleton of ``tree`` and its secret tensors by placeholder name."""
    tensors: dict[str, torch.Tensor] = {}

    def leaf(node: Any, walk: Callable[[Any], Any]) -> Any:
        if isinstance(node, torch.Tensor):
            secret = _Secret(f"t{len(tensors)}")
            tensors[secret.name] = node.detach()
            return secret
        if isinstance(node, PlainOps):
            return _Backend()
        if isinstance(node, PlainKVLayer):
            if node.keys is None:
                return _SecretLayer(None, None)
            return _SecretLayer(walk(node.keys).name, walk(node.values).name)
        return _NOT_A_LEAF

    return _rebuild(tree, leaf, copy_objects=True), tensors


def join_secrets(skeleton: Any, shares: dict[str, torch.Tensor], ops: Any) -> Any:
    """On a party: the skeleton with shares in place of secrets and ``ops`` (the MPC backend)."""
    from pinfer.protocols import crypten_compat  # noqa: F401
    from crypten.mpc import MPCTensor

    from pinfer.protocols.sharing import FRACTIONAL_BITS

    def secret(name: str) -> Any:
        return MPCTensor.from_shares(shares[name], precision=FRACTIONAL_BITS)

    def leaf(node: Any, walk: Callable[[Any], Any]) -> Any:
        if isinstance(node, _Secret):
            return secret(node.name)
        if isinstance(node, _Backend):
            return ops
        if isinstance(node, _SecretLayer):
            layer = ops.new_kv_layer()
            if node.keys is not None:
                layer.append(secret(node.keys), secret(node.values))
            return layer
        return _NOT_A_LEAF

    return _rebuild(skeleton, leaf, copy_objects=False)
