"""Key material for a pinfer deployment: one CA, role-bearing node certificates, party envelope keys.

This package is the layer every node and the client trust each other through: role names
(:mod:`~pinfer.keys.roles`), the CA and its certificates (:mod:`~pinfer.keys.pki`), the on-disk key
directory (:mod:`~pinfer.keys.key_dir`), and what is sealed and signed with them
(:mod:`~pinfer.keys.envelope` HPKE envelopes, :mod:`~pinfer.keys.trust` the CA's signed statements,
:mod:`~pinfer.keys.session` the client/party session contract). It depends on nothing above it.

The names below are the package's documented interface (``keys.load_node_credentials(...)``,
``keys.party_role(...)``, ``keys.check_peer_role(...)``; docs/security.md): a node's code deals in
"the deployment's key material" without caring which of the three modules holds a given piece.
"""

from __future__ import annotations

from pinfer.keys.key_dir import (
    MANIFEST_VERSION,
    KeyDir,
    KeyDirError,
    KeyManifest,
    NodeCredentials,
    init_keys,
    load_ca_key,
    load_deployment_statement,
    load_envelope_private_key,
    load_envelope_public_key,
    load_manifest,
    load_node_credentials,
)
from pinfer.keys.pki import (
    DEFAULT_VALIDITY_DAYS,
    ORGANIZATION,
    KeyMaterialError,
    PeerCertificateError,
    PeerRoleError,
    certificate_role,
    check_peer_role,
    issue_node_certificate,
    make_ca,
)
from pinfer.keys.roles import CLIENT, DEALER, ORCHESTRATOR, node_roles, party_index, party_role
from pinfer.keys.trust import MAX_PARTIES, MIN_PARTIES

__all__ = [
    "CLIENT", "DEALER", "DEFAULT_VALIDITY_DAYS", "MANIFEST_VERSION", "MAX_PARTIES", "MIN_PARTIES", "ORCHESTRATOR",
    "ORGANIZATION", "KeyDir", "KeyDirError", "KeyManifest", "KeyMaterialError", "NodeCredentials",
    "PeerCertificateError", "PeerRoleError", "certificate_role", "check_peer_role", "init_keys",
    "issue_node_certificate", "load_ca_key", "load_deployment_statement", "load_envelope_private_key",
    "load_envelope_public_key", "load_manifest", "load_node_credentials", "make_ca", "node_roles", "party_index",
    "party_role",
]
