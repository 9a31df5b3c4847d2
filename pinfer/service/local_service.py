"""The embedded default deployment: orchestrator, parties and dealer as local processes.

Why separate processes even on one host: each node then holds only its own key folder and share
file, exactly as in docker-compose, so the local run exercises the same code, certificates and
failure modes as a real deployment (a node can be killed and restarted on its own). ``pinfer up``
and the service tests both use :class:`LocalService`.

``root`` receives ``keys/`` (fresh CA and certificates; each process is given only its own
``keys/<role>/`` folder, the orchestrator's with a copy of the public manifest, so the orchestrator
holds no envelope key), ``models/`` (provisioned shares),
``client.token`` (the bearer token, 0600), ``tokens.sha256`` (what the orchestrator checks), one
``<role>.port`` and ``<role>.log`` per process.

While the service is up, a supervisor thread restarts any process that exits, after a backoff that
doubles while it keeps failing soon after start - what the compose stack's ``restart:
unless-stopped`` does, so ``pinfer up`` recovers from a crashed node the same way.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pinfer import keys

START_TIMEOUT_S = 120.0
RESTART_MIN_BACKOFF_S = 1.0
RESTART_MAX_BACKOFF_S = 30.0
STABLE_S = 60.0
"""A process that ran this long before it exited is restarted after the shortest backoff again."""
_SUPERVISE_POLL_S = 0.5

log = logging.getLogger("pinfer.service.local_service")


class ServiceError(RuntimeError):
    """A local node failed to start."""


class LocalService:
    """Start with :meth:`start` (or as a context manager); :meth:`stop` ends every process it started."""

    def __init__(self, root: str | os.PathLike[str], model: str = "tiny-llama", parties: int = 2, slots: int = 1,
                 queue: int = 4, node_slots: int = 2, link: str = "loopback") -> None:
        self.root = Path(root)
        self.model = model
        self.parties = parties
        self.slots = slots
        self.queue = queue
        self.node_slots = node_slots
        self.link = link
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.token = ""
        self._lock = threading.Lock()  # spawning, by start, restart and the supervisor, and stopping
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._held: set[str] = set()
        self._started_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._restart_due: dict[str, float] = {}

    @property
    def key_dir(self) -> Path:
        return self.root / "keys"

    @property
    def ca_path(self) -> Path:
        return keys.KeyDir(self.key_dir).ca_cert

    def node_keys(self, role: str) -> Path:
        """The key folder one process is given (as it would be mounted into its container)."""
        return keys.KeyDir(self.key_dir).node_dir(role)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['orchestrator']}"

    @property
    def node_roles(self) -> list[str]:
        return [keys.party_role(i) for i in range(self.parties)] + [keys.DEALER]

    def __enter__(self) -> LocalService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def prepare(self) -> None:
        """Fresh keys, provisioned shares and a bearer token (kept if ``root`` already has them)."""
        from pinfer.parties.share_store import provision
        from pinfer.service.orchestrator import token_digest

        self.root.mkdir(parents=True, exist_ok=True)
        layout = keys.KeyDir(self.key_dir)
        if not layout.manifest.exists():
            keys.init_keys(self.key_dir, parties=self.parties)
        shutil.copyfile(layout.manifest, self.node_keys(keys.ORCHESTRATOR) / layout.manifest.name)
        if not (self.root / "models" / self.model / "model.json").exists():
            party_keys = {i: keys.load_envelope_public_key(self.key_dir, keys.party_role(i)) for i in range(self.parties)}
            provision(self.model, self.root / "models", party_keys, keys.load_ca_key(self.key_dir))
        token_file = self.root / "client.token"
        if not token_file.exists():
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        self.token = token_file.read_text().strip()
        (self.root / "tokens.sha256").write_text(token_digest(self.token) + "\n")

    def start(self) -> str:
        """Prepare, start the nodes then the orchestrator, then supervise them; return the orchestrator's endpoint."""
        self.prepare()
        self._stopping.clear()
        try:
            for role in self.node_roles:
                self.start_node(role)
            for role in self.node_roles:
                self._wait_port(role)
            self.start_orchestrator()
            self._wait_port("orchestrator")
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="pinfer-supervisor", daemon=True)
        self._supervisor.start()
        return self.endpoint

    def _spawn(self, name: str, args: list[str]) -> None:
        port_file = self.root / f"{name}.port"
        if name not in self.ports:
            port_file.unlink(missing_ok=True)
        output = open(self.root / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "pinfer.cli", *args, "--port-file", str(port_file)],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            # Out of the terminal's process group: Ctrl-C reaches only `pinfer up`, which stops them
            # itself, rather than every process at once, which the supervisor would take for crashes.
            start_new_session=True)
        self._started_at[name] = time.monotonic()
        output.close()

    def start_node(self, role: str) -> None:
        """Start (or restart, on its previous port) one party or dealer node."""
        port = self.ports.get(role, 0)
        args = ["node", "--role", role, "--keys", str(self.node_keys(role)), "--parties", str(self.parties),
                "--listen", f"127.0.0.1:{port}", "--slots", str(self.node_slots), "--link", self.link]
        if role != keys.DEALER:
            args += ["--shares", str(self.root / "models")]
        self._spawn(role, args)

    def start_orchestrator(self) -> None:
        port = self.ports.get("orchestrator", 0)
        args = ["orchestrator", "--keys", str(self.node_keys(keys.ORCHESTRATOR)), "--models", str(self.root / "models"),
                "--tokens-sha256", str(self.root / "tokens.sha256"), "--listen", f"127.0.0.1:{port}",
                "--slots", str(self.slots), "--queue", str(self.queue), "--parties", str(self.parties)]
        for role in self.node_roles:
            args += ["--node", f"{role}=127.0.0.1:{self.ports[role]}"]
        self._spawn("orchestrator", args)

    def _wait_port(self, name: str) -> int:
        port_file = self.root / f"{name}.port"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                self.ports[name] = int(port_file.read_text())
                return self.ports[name]
            if self.processes[name].poll() is not None:
                raise ServiceError(f"{name} exited at start-up; see {self.root / (name + '.log')}")
            time.sleep(0.1)
        raise ServiceError(f"{name} did not start within {START_TIMEOUT_S:.0f} s")

    def _respawn(self, name: str) -> None:
        """Start ``name`` again on its port; its port file reappears once it serves."""
        (self.root / f"{name}.port").unlink(missing_ok=True)
        if name == "orchestrator":
            self.start_orchestrator()
        else:
            self.start_node(name)

    def restart(self, name: str) -> None:
        """Start a stopped or killed process again on its port (unless the supervisor already did) and
        wait until it serves; a process held down by :meth:`kill` is supervised again."""
        with self._lock:
            self._held.discard(name)
            self._restart_due.pop(name, None)
            if self.processes[name].poll() is not None:
                self._respawn(name)
        self._wait_port(name)

    def kill(self, name: str, hold: bool = False) -> None:
        """SIGKILL one process (a crash, for fault tests). The supervisor restarts it, unless ``hold``
        keeps it down until :meth:`restart` (like a stopped container, which no restart policy revives)."""
        with self._lock:
            if hold:
                self._held.add(name)
            process = self.processes[name]
        process.kill()
        process.wait(timeout=10)

    def _supervise(self) -> None:
        # Restarts are scheduled rather than slept on, so one process's backoff never delays noticing another's exit.
        while not self._stopping.wait(_SUPERVISE_POLL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                for name, process in self.processes.items():
                    if name in self._held or process.poll() is None:
                        continue
                    due = self._restart_due.get(name)
                    if due is None:
                        ran = now - self._started_at[name]
                        previous = self._backoff.get(name)
                        backoff = (RESTART_MIN_BACKOFF_S if previous is None or ran >= STABLE_S
                                   else min(RESTART_MAX_BACKOFF_S, 2 * previous))
                        self._backoff[name] = backoff
                        self._restart_due[name] = now + backoff
                        log.warning("%s exited (status %s) after %.0f s; restarting it in %.0f s",
                                    name, process.returncode, ran, backoff)
                    elif now >= due:
                        del self._restart_due[name]
                        self._respawn(name)
                        log.info("%s restarted (pid %d)", name, self.processes[name].pid)

    def stop(self) -> None:
        """Stop supervising, SIGTERM every process, then SIGKILL what is still running after a grace period."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        with self._lock:
            for process in self.processes.values():
                if process.poll() is None:
                    process.terminate()
            deadline = time.monotonic() + 10
            for process in self.processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            self.processes = {}
