"""The roles of a deployment: the orchestrator, parties ``party0`` ... ``party{n-1}``, the dealer and
the client. A role is what a node's certificate vouches for (:mod:`pinfer.keys.pki`) and what every
link checks; this module is the one place role names are spelled and parsed.
"""

from __future__ import annotations

import re

from pinfer.keys.trust import MAX_PARTIES, MIN_PARTIES

ORCHESTRATOR = "orchestrator"
DEALER = "dealer"
CLIENT = "client"

_PARTY_ROLE = re.compile(r"^party([0-9])$")


def party_role(index: int) -> str:
    """The role name of party ``index`` (``party0``, ``party1``, ...)."""
    if not 0 <= index < MAX_PARTIES:
        raise ValueError(f"party index must be in [0, {MAX_PARTIES}), got {index}")
    return f"party{index}"


def party_index(role: str) -> int | None:
    """The party index encoded in ``role``, or None when ``role`` is not a party role."""
    match = _PARTY_ROLE.match(role)
    return int(match.group(1)) if match else None


def node_roles(parties: int) -> tuple[str, ...]:
    """All roles of a deployment with ``parties`` compute parties, in a stable order."""
    check_party_count(parties)
    return (ORCHESTRATOR, *(party_role(i) for i in range(parties)), DEALER, CLIENT)


def check_party_count(parties: int) -> None:
    """Raise ``ValueError`` unless a deployment may have ``parties`` compute parties."""
    if not MIN_PARTIES <= parties <= MAX_PARTIES:
        raise ValueError(f"parties must be in [{MIN_PARTIES}, {MAX_PARTIES}], got {parties}")


def is_known_role(role: str) -> bool:
    """Whether ``role`` names a role of some deployment (a certificate may carry no other)."""
    return role in (ORCHESTRATOR, DEALER, CLIENT) or party_index(role) is not None
