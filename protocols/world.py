"""Launch n parties and a dealer as local OS processes and run jobs on the parties.

Every process joins a mutual-TLS mesh (parties 0..n-1 and the dealer as rank n, with certificates
from a CA made for the world unless a key directory is given), so no share or seed crosses a link in
the clear. Each party receives its dealer seed, agrees on the pairwise seeds for pseudo-random zero
sharings (all drawn with ``os.urandom``), installs the CSPRNG streams and the dealer provider into
CrypTen, then runs jobs ``fn(context, ...)`` sent by the launcher until it is closed. A :class:`LocalWorld` stays up across jobs (tests send many small jobs
to one world); :func:`run_parties` is the one-job form. Any process failing or timing out stops the
whole world with :class:`WorldError`, so callers never hang on a dead peer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import secrets
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

PARTY_TIMEOUT_S = 1800.0
DEALER_IDLE_TIMEOUT_S = 24 * 3600.0


class WorldError(RuntimeError):
    """A party or the dealer failed, or the run timed out."""


@dataclass
class PartyContext:
    rank: int
    world_size: int
    provider: Any  # DealerProvider; typed loosely so this module imports without crypten
    costs: Any  # CostMeter
    kept: dict[str, Any] = field(default_factory=dict)
    """What one job leaves in this party's process for the next ones (a loaded model): a world's jobs
    share it for as long as the world runs, and nothing else sees it."""


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (a later bind may still race another process)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass(frozen=True)
class MeshPlan:
    """What every process of one world needs to join its TLS mesh."""

    n_parties: int
    key_dir: str
    ports: tuple[int, ...]
    session_id: str
    emulation: Any = None  # tls.LinkEmulation for benchmarks over emulated links

    def connect(self, rank: int, recv_timeout_s: float):
        from pinfer import keys

        from . import tls

        role = keys.party_role(rank) if rank < self.n_parties else keys.DEALER
        config = tls.TlsCommConfig(
            rank=rank,
            world_size=self.n_parties,
            endpoints={r: ("127.0.0.1", port) for r, port in enumerate(self.ports)},
            credentials=keys.load_node_credentials(self.key_dir, role),
            session_id=self.session_id,
            with_dealer=True,
            recv_timeout_s=recv_timeout_s,
            emulation=self.emulation,
        )
        return tls.TlsCommunicator.connect(config)


def activate_communicator(communicator: Any) -> None:
    """Make a connected TLS communicator CrypTen's, with pinfer's fixed-point settings and counters on."""
    from . import crypten_compat  # noqa: F401
    import crypten

    from . import crypten_config, tls

    tls.install(communicator)
    crypten_config.install()
    crypten.cfg["communicator.verbose"] = True


def start_party_protocol(communicator: Any, rank: int, world_size: int) -> tuple[Any, Callable[[], Any]]:
    """After :func:`activate_communicator`: take the dealer seed, agree the party seeds, install the dealer.

    Returns the :class:`~pinfer.protocols.dealer.DealerProvider` (close it when the world ends) and
    a cost ``reading`` for a :class:`~pinfer.protocols.costs.CostMeter`. Every seed travels over the
    mesh's TLS links and comes from ``os.urandom``, so this is the one place a party's CrypTen state
    is keyed, whoever launched the process (a local world or a party node's session worker).
    """
    import crypten
    import crypten.communicator as comm
    import crypten.mpc

    from . import crypten_rng
    from .channel import Channel
    from .costs import Cost
    from .dealer import DealerProvider

    dealer = Channel(communicator.transport(world_size))
    seed = dealer.recv().tensors[0].numpy().tobytes()
    crypten_rng.install(_agree_party_seeds(rank, world_size))
    provider = DealerProvider(dealer, seed)
    providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
    # Only the dealer remains: a stray reference to TFP (party 0 knows every triple) or to
    # CrypTen's own TTP client fails loudly instead of silently weakening the protocol.
    providers.clear()
    providers[DealerProvider.NAME] = provider
    crypten.cfg["mpc.provider"] = DealerProvider.NAME

    def reading() -> Cost:
        # bytes this party sent to the other parties (framed, from the mesh's counters), not CrypTen's
        # comm_bytes, which adds what was received
        links = communicator.stats().links
        sent = sum(link.bytes_sent for peer, link in links.items() if peer < world_size)
        return Cost(time.perf_counter(), sent, comm.get().comm_rounds,
                    dealer.stats.bytes_sent + dealer.stats.bytes_received)

    return provider, reading


def _agree_party_seeds(rank: int, world_size: int):
    """Pairwise seeds with the neighbours and a common seed, exchanged over the party links."""
    import crypten.communicator as comm

    from .crypten_rng import PartySeeds
    from .csprng import SEED_BYTES, fresh_seed

    def as_tensor(seed: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(seed), dtype=torch.int64).clone()

    next_seed, local_seed, common_seed = fresh_seed(), fresh_seed(), fresh_seed()
    prev_tensor = torch.zeros(SEED_BYTES // 8, dtype=torch.int64)
    if world_size > 1:
        send = comm.get().isend(as_tensor(next_seed), (rank + 1) % world_size)
        recv = comm.get().irecv(prev_tensor, src=(rank - 1) % world_size)
        send.wait()
        recv.wait()
    else:
        prev_tensor = as_tensor(next_seed)
    common = comm.get().broadcast(as_tensor(common_seed), 0)
    return PartySeeds(
        prev=prev_tensor.numpy().tobytes(),
        next=next_seed,
        local=local_seed,
        common=common.numpy().tobytes(),
    )


def _report(conn: Connection, status: str, value: Any) -> None:
    # Plain pickle: torch's multiprocessing reducer would pass tensors as file descriptors that die
    # with this process. These pipes only ever link a launcher to the processes it spawned.
    conn.send_bytes(pickle.dumps((status, value)))


def _party_main(plan: MeshPlan, rank: int, control: Connection) -> None:
    torch.set_num_threads(1)
    world_size = plan.n_parties
    try:
        communicator = plan.connect(rank, recv_timeout_s=PARTY_TIMEOUT_S)
        activate_communicator(communicator)
        from .costs import CostMeter

        provider, reading = start_party_protocol(communicator, rank, world_size)
        _report(control, "ready", None)
    except BaseException as exc:
        _report(control, "error", f"party {rank} start-up: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return
    kept: dict[str, Any] = {}
    while True:
        job = pickle.loads(control.recv_bytes())
        if job is None:
            provider.close()
            return
        fn, args, kwargs = job
        try:
            context = PartyContext(rank, world_size, provider, CostMeter(reading), kept)
            _report(control, "ok", fn(context, *args, **kwargs))
        except BaseException as exc:  # reported to the launcher, which stops the other processes
            _report(control, "error", f"party {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return


def _dealer_main(plan: MeshPlan, control: Connection) -> None:
    torch.set_num_threads(1)
    try:
        from .channel import Channel
        from .dealer import DealerServer

        # The dealer idles between a test's jobs, so its receive deadline is the world's lifetime.
        mesh = plan.connect(plan.n_parties, recv_timeout_s=DEALER_IDLE_TIMEOUT_S)
        server = DealerServer([Channel(mesh.transport(rank)) for rank in range(plan.n_parties)])
        server.distribute_seeds()
        server.serve()
        _report(control, "ok", None)
    except BaseException as exc:
        _report(control, "error", f"dealer: {type(exc).__name__}: {exc}")


class LocalWorld:
    """n party processes and a dealer process on this host, reused across jobs.

    Jobs must be importable by name (processes are spawned, not forked, so torch's thread pools are
    never copied mid-use). Use as a context manager; :meth:`close` always stops every process.
    """

    def __init__(
        self,
        n_parties: int = 2,
        timeout_s: float = PARTY_TIMEOUT_S,
        key_dir: str | os.PathLike[str] | None = None,
        emulation: Any = None,
    ) -> None:
        if n_parties not in (2, 3):
            raise ValueError("pinfer runs 2 or 3 parties")
        self.n_parties = n_parties
        self.timeout_s = timeout_s
        self._own_keys = None
        if key_dir is None:
            from pinfer import keys

            self._own_keys = tempfile.TemporaryDirectory(prefix="pinfer-world-keys-")
            key_dir = Path(self._own_keys.name) / "keys"
            keys.init_keys(key_dir, parties=n_parties)
        plan = MeshPlan(n_parties, str(key_dir), tuple(free_ports(n_parties + 1)), secrets.token_hex(8), emulation)
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["pinfer.protocols.tls", "pinfer.protocols.dealer"])
        self._controls: dict[str, Connection] = {}
        self._processes = []
        for rank in range(n_parties):
            mine, theirs = ctx.Pipe()
            self._controls[f"party{rank}"] = mine
            self._processes.append(ctx.Process(
                target=_party_main, name=f"pinfer-party{rank}", daemon=True, args=(plan, rank, theirs),
            ))
        mine, theirs = ctx.Pipe()
        self._dealer_control = mine
        self._processes.append(ctx.Process(target=_dealer_main, name="pinfer-dealer", daemon=True, args=(plan, theirs)))
        for process in self._processes:
            process.start()
        try:
            self._collect(self._controls)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LocalWorld:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, fn: Callable[..., Any], *args: Any, party_kwargs: list[dict[str, Any]] | None = None) -> list[Any]:
        """Run ``fn(context, *args, **party_kwargs[rank])`` on every party; return their results."""
        party_kwargs = party_kwargs or [{} for _ in range(self.n_parties)]
        if len(party_kwargs) != self.n_parties:
            raise ValueError("party_kwargs needs one entry per party")
        try:
            for rank, kwargs in enumerate(party_kwargs):
                self._controls[f"party{rank}"].send_bytes(pickle.dumps((fn, args, kwargs)))
            outcomes = self._collect(self._controls)
        except BaseException:
            self.close()
            raise
        return [outcomes[f"party{rank}"] for rank in range(self.n_parties)]

    def close(self) -> None:
        for control in self._controls.values():
            try:
                control.send_bytes(pickle.dumps(None))
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for process in self._processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._controls = {}
        if self._own_keys is not None:
            self._own_keys.cleanup()
            self._own_keys = None

    def _collect(self, controls: dict[str, Connection]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        pending = dict(controls)
        pending["dealer"] = self._dealer_control
        outcomes: dict[str, Any] = {}
        while len(pending) > 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorldError(f"timed out after {self.timeout_s:.0f} s waiting for {sorted(pending)}")
            ready = wait(list(pending.values()), timeout=min(remaining, 1.0))
            for name, conn in list(pending.items()):
                if conn not in ready:
                    continue
                try:
                    status, value = pickle.loads(conn.recv_bytes())
                except EOFError:
                    raise WorldError(f"{name} exited unexpectedly") from None
                if status == "error":
                    raise WorldError(value)
                if name == "dealer":
                    raise WorldError("the dealer stopped before the parties")
                outcomes[name] = value
                del pending[name]
            dead = [p.name for p in self._processes if p.exitcode is not None]
            if dead and not ready:
                raise WorldError(f"process exited: {', '.join(dead)}")
        return outcomes


def run_parties(
    fn: Callable[..., Any],
    *args: Any,
    n_parties: int = 2,
    party_kwargs: list[dict[str, Any]] | None = None,
    timeout_s: float = PARTY_TIMEOUT_S,
    emulation: Any = None,
) -> list[Any]:
    """Start a world, run one job ``fn(context, *args, **party_kwargs[rank])``, stop the world."""
    with LocalWorld(n_parties, timeout_s, emulation=emulation) as world:
        return world.run(fn, *args, party_kwargs=party_kwargs)
