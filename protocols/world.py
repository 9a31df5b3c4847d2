"""Launch n parties and a dealer as local OS processes and run one function on the parties.

Each party process joins the party-to-party communicator, receives its dealer seed, agrees on the
pairwise seeds for pseudo-random zero sharings (all drawn with ``os.urandom``), installs the
CSPRNG streams and the dealer provider into CrypTen, then calls the user function with a
:class:`PartyContext`. Any process failing or timing out stops the whole run with
:class:`WorldError`, so callers never hang on a dead peer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

PARTY_TIMEOUT_S = 1800.0


class WorldError(RuntimeError):
    """A party or the dealer failed, or the run timed out."""


@dataclass
class PartyContext:
    rank: int
    world_size: int
    provider: Any  # DealerProvider; typed loosely so this module imports without crypten
    costs: Any  # CostMeter


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join_communicator(rank: int, world_size: int, rendezvous: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world_size), "RENDEZVOUS": rendezvous,
         "DISTRIBUTED_BACKEND": "gloo"}
    )
    from . import crypten_compat  # noqa: F401
    import crypten
    import crypten.communicator as comm

    crypten.cfg.communicator.verbose = True
    comm._init(use_threads=False, rank=rank, world_size=world_size)


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
    # with this process. This pipe only ever links a launcher to the processes it spawned.
    conn.send_bytes(pickle.dumps((status, value)))


def _party_main(rank, world_size, rendezvous, dealer_conn, result_conn, fn, args, kwargs) -> None:
    torch.set_num_threads(1)
    try:
        _join_communicator(rank, world_size, rendezvous)
        import crypten
        import crypten.communicator as comm
        import crypten.mpc

        from . import crypten_rng
        from .channel import Channel
        from .costs import Cost, CostMeter
        from .dealer import DealerProvider

        dealer = Channel(dealer_conn)
        seed = dealer.recv().tensors[0].numpy().tobytes()
        crypten_rng.install(_agree_party_seeds(rank, world_size))
        provider = DealerProvider(dealer, seed)
        providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
        providers[DealerProvider.NAME] = provider
        crypten.cfg.mpc.provider = DealerProvider.NAME

        def reading() -> Cost:
            stats = comm.get()
            return Cost(time.perf_counter(), stats.comm_bytes, stats.comm_rounds,
                        dealer.stats.bytes_sent + dealer.stats.bytes_received)

        context = PartyContext(rank, world_size, provider, CostMeter(reading))
        result = fn(context, *args, **kwargs)
        provider.close()
        _report(result_conn, "ok", result)
    except BaseException as exc:  # reported to the launcher, which stops the other processes
        _report(result_conn, "error", f"party {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def _dealer_main(conns, result_conn) -> None:
    torch.set_num_threads(1)
    try:
        from .channel import Channel
        from .dealer import DealerServer

        server = DealerServer([Channel(conn) for conn in conns])
        server.distribute_seeds()
        server.serve()
        _report(result_conn, "ok", None)
    except BaseException as exc:
        _report(result_conn, "error", f"dealer: {type(exc).__name__}: {exc}")


def run_parties(
    fn: Callable[..., Any],
    *args: Any,
    n_parties: int = 2,
    party_kwargs: list[dict[str, Any]] | None = None,
    timeout_s: float = PARTY_TIMEOUT_S,
) -> list[Any]:
    """Run ``fn(context, *args, **party_kwargs[rank])`` on every party; return their results.

    ``fn`` must be importable by name (processes are spawned, not forked, so torch's thread pools
    are never copied mid-use).
    """
    if n_parties not in (2, 3):
        raise ValueError("pinfer runs 2 or 3 parties")
    party_kwargs = party_kwargs or [{} for _ in range(n_parties)]
    if len(party_kwargs) != n_parties:
        raise ValueError("party_kwargs needs one entry per party")
    ctx = mp.get_context("spawn")
    rendezvous = f"tcp://127.0.0.1:{_free_port()}"
    dealer_ends, party_ends = zip(*(ctx.Pipe() for _ in range(n_parties)))
    results: dict[str, Connection] = {}
    processes = []
    for rank in range(n_parties):
        receiver, sender = ctx.Pipe(duplex=False)
        results[f"party{rank}"] = receiver
        processes.append(ctx.Process(
            target=_party_main, name=f"pinfer-party{rank}",
            args=(rank, n_parties, rendezvous, party_ends[rank], sender, fn, args, party_kwargs[rank]),
        ))
    receiver, sender = ctx.Pipe(duplex=False)
    results["dealer"] = receiver
    processes.append(ctx.Process(target=_dealer_main, name="pinfer-dealer", args=(list(dealer_ends), sender)))
    for process in processes:
        process.start()
    try:
        outcomes = _collect(results, processes, timeout_s)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
    return [outcomes[f"party{rank}"] for rank in range(n_parties)]


def _collect(results: dict[str, Connection], processes: list, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    pending = dict(results)
    outcomes: dict[str, Any] = {}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorldError(f"timed out after {timeout_s:.0f} s waiting for {sorted(pending)}")
        ready = wait(list(pending.values()), timeout=min(remaining, 1.0))
        for name, conn in list(pending.items()):
            if conn in ready:
                try:
                    status, value = pickle.loads(conn.recv_bytes())
                except EOFError:
                    raise WorldError(f"{name} exited without a result") from None
                if status == "error":
                    raise WorldError(value)
                outcomes[name] = value
                del pending[name]
        dead = [p.name for p in processes if p.exitcode not in (None, 0)]
        if dead and not ready:
            raise WorldError(f"process died: {', '.join(dead)}")
    return outcomes
