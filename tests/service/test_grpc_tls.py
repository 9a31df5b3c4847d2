"""TLS 1.3 only on gRPC ports without a minimum-version API: the cipher-list setting and its start-up check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pinfer.keys import grpc_tls

_SERVE_AFTER_GRPC = """
import sys
import grpc  # before the setting: gRPC has read its (default) TLS settings now
from pinfer.keys import grpc_tls
try:
    grpc_tls.require_tls13()
except grpc_tls.GrpcTlsError:
    print("require_tls13 refused")
from pinfer.service.orchestrator import OrchestratorConfig, serve
config = OrchestratorConfig(key_root=sys.argv[1], nodes={"party0": "127.0.0.1:9", "party1": "127.0.0.1:9",
                            "dealer": "127.0.0.1:9"}, models_root=sys.argv[2], token_sha256=frozenset())
try:
    serve(config, "127.0.0.1:0")
except grpc_tls.GrpcTlsError as exc:
    print("serve refused:", exc)
"""


def test_a_server_whose_process_imported_grpc_first_refuses_to_serve(key_dir: Path, tmp_path: Path) -> None:
    """Without the setting gRPC accepts TLS 1.2; the start-up probe notices and the server does not serve."""
    env = {k: v for k, v in os.environ.items() if k != grpc_tls.CIPHER_SUITES_ENV}
    done = subprocess.run([sys.executable, "-c", _SERVE_AFTER_GRPC, str(key_dir), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "require_tls13 refused"
    assert lines[1].startswith("serve refused: port ") and "accepts TLS 1.2" in lines[1]


def test_this_process_set_it_before_grpc() -> None:
    assert os.environ[grpc_tls.CIPHER_SUITES_ENV] == grpc_tls.TLS12_REFUSING_SUITES
    grpc_tls.require_tls13()  # idempotent once set


def test_probe_host() -> None:
    assert grpc_tls.probe_host("0.0.0.0:7100") == "127.0.0.1"
    assert grpc_tls.probe_host("[::]:7100") == "::1"
    assert grpc_tls.probe_host("127.0.0.1:0") == "127.0.0.1"
    assert grpc_tls.probe_host("party0:7100") == "party0"
