"""A failing session worker logs where it failed (exception types, frames) and nothing it computed."""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Iterator

import pytest
import torch

from pinfer.parties import dealer_node, session_worker
from pinfer.parties.session_worker import WorkerSpec
from pinfer.proto import node_pb2

SESSION = "5ec0e7" * 4


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # the worker mains pin one thread, as befits a worker process
    yield
    torch.set_num_threads(threads)


def _open_input_share(spec: WorkerSpec, conn: object) -> None:
    raise ValueError("SECRET123: a share value")


def _join_mesh(spec: WorkerSpec, conn: object) -> None:
    try:
        _open_input_share(spec, conn)
    except ValueError as exc:
        raise RuntimeError("SECRET456 derived from a key") from exc


def _run_worker(main: Callable[[WorkerSpec, object], None], role: str) -> node_pb2.WorkerEvent:
    ours, theirs = mp.Pipe()
    main(WorkerSpec(role, "/nonexistent", SESSION, 2, "127.0.0.1"), theirs)
    return node_pb2.WorkerEvent.FromString(ours.recv_bytes())


def test_party_worker_failure_logs_type_and_frames_but_no_message(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(session_worker, "_serve_party_session", _open_input_share)
    with caplog.at_level(logging.ERROR, logger="pinfer.worker"):
        assert _run_worker(session_worker.party_worker_main, "party1").failed == "ValueError"
    [record] = [r for r in caplog.records if r.name == "pinfer.worker"]
    message = record.getMessage()
    assert "party1" in message and SESSION[:8] in message and "builtins.ValueError" in message
    assert f"{__file__}:" in message and "in _open_input_share" in message and "in party_worker_main" in message
    assert record.exc_info is None and "SECRET123" not in caplog.text


def test_dealer_worker_failure_logs_the_cause_chain_but_no_message(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dealer_node, "_serve_dealer_session", _join_mesh)
    with caplog.at_level(logging.ERROR, logger="pinfer.worker"):
        assert _run_worker(dealer_node.dealer_worker_main, "dealer").failed == "RuntimeError"
    [record] = [r for r in caplog.records if r.name == "pinfer.worker"]
    message = record.getMessage()
    assert "builtins.RuntimeError at" in message and "caused by builtins.ValueError at" in message
    assert "in _join_mesh" in message and "in _open_input_share" in message and "in dealer_worker_main" in message
    assert record.exc_info is None
    assert "SECRET123" not in caplog.text and "SECRET456" not in caplog.text


_STRAY_EXCEPTIONS = """
import gc, threading
from pinfer.parties.failure_log import install_worker_logging

install_worker_logging("party0", "5ec0e7" * 4)

def in_a_thread():
    raise ValueError("SECRET789 in a thread")

thread = threading.Thread(target=in_a_thread, name="pinfer-test-thread")
thread.start()
thread.join()

class Finaliser:
    def __del__(self):
        raise RuntimeError("SECRET790 in a finaliser")

Finaliser()
gc.collect()
"""


def test_a_worker_process_logs_stray_exceptions_as_types_and_frames() -> None:
    """In a worker process (a fresh interpreter here), log lines carry the node's format plus the session,
    and exceptions in threads or finalisers are logged as types and frames, not printed with messages."""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STRAY_EXCEPTIONS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    prefix = rf"^\d{{4}}-\d\d-\d\d [\d:,]+ party0 worker {SESSION[:8]} ERROR party0 worker of session {SESSION[:8]}: "
    assert re.match(prefix + r"thread pinfer-test-thread failed: builtins\.ValueError at .*:\d+ in in_a_thread <- .*threading\.py:\d+ in run\b.*$",
                    lines[0]), lines
    assert re.match(prefix + r"unraisable exception: builtins\.RuntimeError at .*:\d+ in __del__$", lines[1]), lines
    assert len(lines) == 2 and "SECRET" not in done.stderr and "Traceback" not in done.stderr


def test_a_worker_main_run_in_its_caller_leaves_logging_and_hooks_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import threading

    hooks = threading.excepthook, sys.unraisablehook
    handlers = list(logging.getLogger().handlers)
    monkeypatch.setattr(session_worker, "_serve_party_session", _open_input_share)
    _run_worker(session_worker.party_worker_main, "party1")
    assert (threading.excepthook, sys.unraisablehook) == hooks and logging.getLogger().handlers == handlers
