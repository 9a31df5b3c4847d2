"""The TLS data plane with real processes on loopback: collectives, counters, CrypTen on top,
authentication failures, timeouts, disconnects, link emulation, and the typed object codec."""

from __future__ import annotations

import math
import resource
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mesh_workers as mw
from pinfer import keys
from pinfer.keys import envelope
from pinfer.protocols import tls
from pinfer.protocols.tls import codec, link, mesh
from pinfer.protocols.world import free_ports
from pinfer.tensor_codes import DTYPE_CODES

MASK = (1 << 64) - 1


def _ok(results: dict[int, tuple[str, object]]) -> dict[int, dict]:
    for rank, (status, value) in results.items():
        assert status == "ok", f"rank {rank}: {value}"
    return {rank: value for rank, (_, value) in results.items()}  # type: ignore[misc]


def _wrap(value: int) -> int:
    value &= MASK
    return value - (1 << 64) if value >> 63 else value


@pytest.mark.parametrize(("world_size", "with_dealer"), [(2, False), (2, True), (3, True)])
def test_collectives_and_counters(key_dir: Path, world_size: int, with_dealer: bool) -> None:
    mesh_size = world_size + (1 if with_dealer else 0)
    ports = free_ports(mesh_size)
    out = _ok(mw.launch(mw.collectives, list(range(mesh_size)), (key_dir, world_size, ports, with_dealer)))
    values = [mw._values(r).tolist() for r in range(world_size)]
    expected_sum = [_wrap(sum(col)) for col in zip(*values)]
    expected_xor = [0] * len(values[0])
    for row in values:
        expected_xor = [a ^ b for a, b in zip(expected_xor, row)]
    for rank in range(world_size):
        got = out[rank]
        assert got["all_reduce"] == expected_sum
        assert got["all_reduce_xor"] == expected_xor
        assert got["all_reduce_batched"][0] == expected_sum
        assert got["all_reduce_batched"][1] == [_wrap(3 * sum(v[i] for v in values)) for i in range(2)]
        assert got["broadcast"] == [101] and got["broadcast_in_place"] == [101]
        assert got["reduce"] == (expected_sum if rank == 0 else None)
        assert got["gather"] == (values if rank == world_size - 1 else [None])
        assert got["all_gather"] == values
        assert got["scatter"] == [[10 * rank] * 2] * 2
        assert got["ring"] == [(rank - 1) % world_size] * 3
        assert "torch.Size([2, 3])" in got["broadcast_obj"] and "-1180591620717411303424" in got["broadcast_obj"]
        # one all_reduce of 1000 int64: one message of header (12) + 1 dim (8) + 8000 bytes to each peer
        delta = got["delta"]
        assert delta["rounds"] == 1
        for peer in range(world_size):
            if peer != rank:
                link_stats = delta["links"][str(peer)]
                assert link_stats == {"bytes_sent": 8020, "bytes_received": 8020, "messages_sent": 1,
                                "messages_received": 1, "rounds": 1}
        if with_dealer:
            assert got["dealer_bytes"] == b"seed-for-party-%d" % rank
            assert got["dealer_message"] == ("correction", {"party": rank}, [[0, rank, 2 * rank]])
            assert str(world_size) in got["stats"]["links"]  # dealer traffic is its own link
        assert got["stats"]["rounds"] > 10 and got["crypten_rounds"] == 0  # CrypTen counts only when verbose
        assert got["after_reset"] == (0, 0, 0, 0)
    assert out[1]["recv"] == [[0, 1], [2, 3]]
    if with_dealer:
        assert out[0]["ttp"] == [0, 3, 6, 9, 12, 15]
        assert out[world_size]["stats"]["links"].keys() == {str(r) for r in range(world_size)}
    # what one side sent on a link, the other side received
    for a in range(world_size):
        for b in range(world_size):
            if a != b:
                assert out[a]["stats"]["links"][str(b)]["bytes_sent"] == out[b]["stats"]["links"][str(a)]["bytes_received"]


@pytest.mark.parametrize("world_size", [2, 3])
def test_crypten_arithmetic_over_tls(key_dir: Path, world_size: int) -> None:
    ports = free_ports(world_size)
    out = _ok(mw.launch(mw.crypten_arithmetic, list(range(world_size)), (key_dir, ports, world_size)))
    expected = [(1.5 + 0.25) * 2 - 1, (-2.0 + 4.0) * 2 - 1, (3.25 - 1.0) * 2 - 1]
    for rank in range(world_size):
        assert out[rank]["plain"] == pytest.approx(expected, abs=1e-4)
        assert out[rank]["share_differs"] and out[rank]["restored"]
        assert out[rank]["crypten_rounds"] > 0 and out[rank]["crypten_bytes"] > 0
        assert out[rank]["rounds"] >= out[rank]["crypten_rounds"]
    assert out[1]["private"] == pytest.approx([1.5, -2.0, 3.25], abs=1e-4)
    assert all(out[r]["private"] is None for r in range(world_size) if r != 1)


def test_receive_timeout_raises(key_dir: Path) -> None:
    out = _ok(mw.launch(mw.recv_with_timeout, [0, 1], (key_dir, free_ports(2))))
    assert out[0]["error"] == "CommTimeoutError" and 0.4 < out[0]["elapsed"] < 3.0
    assert out[1]["got"] == "done"


def test_dead_peer_fails_pending_receive_fast(key_dir: Path) -> None:
    ports = free_ports(2)
    dying, _ = mw.start(mw.exit_abruptly, 1, (key_dir, ports))
    out = _ok(mw.launch(mw.exit_abruptly, [0], (key_dir, ports), timeout=30))
    dying.join(5)
    assert out[0]["error"] == "PeerDisconnectedError" and out[0]["elapsed"] < 5.0


def test_mesh_timeout_when_a_rank_never_comes(key_dir: Path) -> None:
    out = _ok(mw.launch(mw.connect_only, [0], (key_dir, free_ports(2), 2, {"connect_timeout_s": 1.0})))
    assert out[0]["error"] == "CommTimeoutError" and "[1]" in out[0]["message"]


def test_foreign_ca_peer_is_refused_both_ways(key_dir: Path, foreign_key_dir: Path) -> None:
    ports = free_ports(2)
    honest = mw.start(mw.connect_only, 0, (key_dir, ports, 2, {"connect_timeout_s": 2.5}))
    impostor = mw.launch(mw.connect_only, [1], (key_dir, ports, 2, {"credentials_dir": foreign_key_dir}))
    status, value = impostor[1]
    assert status == "ok" and value["error"] == "PeerAuthError", value
    process, queue = honest
    _, status, value = queue.get(timeout=30)
    process.join(5)
    assert status == "ok" and value["error"] == "CommTimeoutError", value


def _impostor_hello(port: int, credentials: keys.NodeCredentials, claimed_rank: int) -> bytes:
    """Dial rank 0 like a party would, with ``credentials``; return whatever rank 0 answers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    context.load_verify_locations(cafile=str(credentials.ca_path))
    context.check_hostname = False
    deadline = time.monotonic() + 20
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with context.wrap_socket(raw) as sock:
        session = b"test-session"
        sock.sendall(mesh._HELLO.pack(mesh._HELLO_MAGIC, codec.WIRE_VERSION, claimed_rank, len(session)) + session)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (ssl.SSLError, OSError):
            pass
        return received


def test_wrong_role_and_wrong_ca_dialers_are_refused_and_the_real_peer_still_joins(key_dir: Path, foreign_key_dir: Path) -> None:
    ports = free_ports(2)
    process, queue = mw.start(mw.connect_only, 0, (key_dir, ports, 2, {"connect_timeout_s": 20.0}))
    # a CA-signed certificate of the wrong role (the client) claiming to be party 1: no hello comes back
    assert _impostor_hello(ports[0], keys.load_node_credentials(key_dir, "client"), 1) == b""
    # a party certificate claiming another rank: refused as well
    assert _impostor_hello(ports[0], keys.load_node_credentials(key_dir, "party2"), 1) == b""
    # a foreign CA's party1: the TLS handshake itself fails
    with pytest.raises(ssl.SSLError):
        _impostor_hello(ports[0], keys.load_node_credentials(foreign_key_dir, "party1"), 1)
    joined = mw.launch(mw.connect_only, [1], (key_dir, ports, 2, {}))
    _, status, value = queue.get(timeout=30)
    process.join(5)
    assert status == "ok" and value == {"error": None, "sum": [3]}, value
    assert joined[1] == ("ok", {"error": None, "sum": [3]})


def _fake_server(credentials: keys.NodeCredentials, listener: socket.socket) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    listener.settimeout(10)
    try:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as sock:
            sock.recv(1)
    except (OSError, ssl.SSLError):
        pass


@pytest.mark.parametrize("server", ["wrong-role", "foreign-ca"])
def test_dialer_refuses_a_listener_with_the_wrong_identity(key_dir: Path, foreign_key_dir: Path, server: str) -> None:
    credentials = (keys.load_node_credentials(key_dir, "dealer") if server == "wrong-role"
                   else keys.load_node_credentials(foreign_key_dir, "party0"))
    listener = tls.bind_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    thread = threading.Thread(target=_fake_server, args=(credentials, listener), daemon=True)
    thread.start()
    config = mw.make_config(key_dir, 1, 2, [port, free_ports(1)[0]], connect_timeout_s=5.0)
    with pytest.raises(tls.PeerAuthError):
        tls.TlsCommunicator.connect(config)
    listener.close()
    thread.join(5)


def test_other_session_is_refused(key_dir: Path) -> None:
    ports = free_ports(2)
    process, queue = mw.start(mw.connect_only, 0, (key_dir, ports, 2, {"connect_timeout_s": 2.0}))
    other = mw.launch(mw.connect_only, [1], (key_dir, ports, 2, {"session_id": "another-session"}))
    assert other[1][0] == "ok" and other[1][1]["error"] == "PeerAuthError", other
    _, status, value = queue.get(timeout=30)
    process.join(5)
    assert value["error"] == "CommTimeoutError"


def test_config_must_match_credentials(key_dir: Path) -> None:
    with pytest.raises(ValueError):
        tls.TlsCommunicator.connect(mw.make_config(key_dir, 1, 2, free_ports(2), role="party0"))
    with pytest.raises(ValueError):
        tls.TlsCommunicator.connect(mw.make_config(key_dir, 2, 2, free_ports(3), with_dealer=False, role="dealer"))


def test_link_emulation_adds_delay_and_limits_bandwidth(key_dir: Path) -> None:
    out = _ok(mw.launch(mw.emulated_link, [0, 1], (key_dir, free_ports(2), 80e6, 0.02)))
    # 3 ping-pongs = 6 one-way delays; 1 MB at 80 Mbit/s = 0.1 s plus the reply's delay
    assert out[0]["ping"] >= 6 * 0.02 and out[0]["ping"] < 2.0
    assert out[0]["bulk"] >= 0.1 + 2 * 0.02 - 0.005 and out[0]["bulk"] < 3.0


# --- typed object codec (in process) ---------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False),
                     st.text(max_size=20), st.binary(max_size=20))
_objects = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-5, 5)), children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_objects)
def test_codec_round_trip(obj: object) -> None:
    decoded = tls.decode_object(tls.encode_object(obj))
    assert decoded == obj and type(decoded) is type(obj)


def test_codec_tensors_and_sizes() -> None:
    obj = {"size": torch.Size([3, 4]), "t": torch.arange(6, dtype=torch.int64).reshape(2, 3).t(), "f": torch.ones(2)}
    decoded = tls.decode_object(tls.encode_object(obj))
    assert isinstance(decoded["size"], torch.Size) and decoded["size"] == torch.Size([3, 4])
    assert torch.equal(decoded["t"], obj["t"]) and decoded["f"].dtype == torch.float32


@pytest.mark.parametrize("obj", [object(), {1, 2}, lambda: None, torch.zeros(2, dtype=torch.complex64), [[[[object()]]]]])
def test_codec_refuses_arbitrary_objects(obj: object) -> None:
    with pytest.raises(tls.UnsupportedObjectError):
        tls.encode_object(obj)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_codec_rejects_garbage_with_a_typed_error(data: bytes) -> None:
    try:
        tls.decode_object(data)
    except tls.CommProtocolError:
        pass


@pytest.mark.parametrize("data", [b"", b"I\x00\x00\x00\x05\x01", b"L\xff\xff\xff\xff", b"Zx", b"N\x00", b"Q",
                                  b"M\x00\x00\x00\x01L\x00\x00\x00\x00N", b"L\x00\x00\x00\x01" * 40 + b"N"])
def test_codec_malformed_examples(data: bytes) -> None:
    with pytest.raises(tls.CommProtocolError):
        tls.decode_object(data)


# --- frame parsing against a misbehaving (authenticated) peer, in process over a socket pair ----------


def _pair(key_dir: Path, **overrides: object) -> tuple[tls.TlsCommunicator, socket.socket]:
    """A rank-0 communicator whose link to rank 1 is a plain socket pair; the test plays rank 1."""
    ours, theirs = socket.socketpair()
    config = mw.make_config(key_dir, 0, 2, [1, 2], recv_timeout_s=2.0, **overrides)
    return tls.TlsCommunicator(config, {1: ours}), theirs  # type: ignore[dict-item]


def _frame(kind: int, payload: bytes = b"", code: int = 0, dims: tuple[int, ...] = (), reserved: int = 0) -> bytes:
    return codec.FRAME.pack(kind, code, len(dims), reserved, len(payload)) + b"".join(codec.DIM.pack(d) for d in dims) + payload


@pytest.mark.parametrize(
    "frame",
    [
        _frame(9),  # unknown kind
        _frame(codec.KIND_TENSOR, bytes(8), code=1, dims=(1,), reserved=1),  # reserved field set
        _frame(codec.KIND_TENSOR, bytes(8), code=77, dims=(1,)),  # unknown dtype
        _frame(codec.KIND_TENSOR, bytes(8), code=1, dims=(2,)),  # length does not match the shape
        _frame(codec.KIND_OBJECT, b"", code=1),  # dtype on a non-tensor frame
        codec.FRAME.pack(codec.KIND_TENSOR, 1, 9, 0, 8),  # too many dims
    ],
)
def test_malformed_frames_fail_the_link_with_a_protocol_error(key_dir: Path, frame: bytes) -> None:
    comm, peer = _pair(key_dir)
    with comm, peer:
        peer.sendall(frame)
        with pytest.raises(tls.CommProtocolError):
            comm.recv(torch.zeros(1, dtype=torch.int64), 1)
        with pytest.raises(tls.CommProtocolError):  # the link stays failed
            comm.send(torch.zeros(1, dtype=torch.int64), 1)


def test_oversized_announcement_is_refused_before_allocating(key_dir: Path) -> None:
    comm, peer = _pair(key_dir, max_message_bytes=1024)
    with comm, peer:
        peer.sendall(codec.FRAME.pack(codec.KIND_BYTES, 0, 0, 0, 1 << 40))
        with pytest.raises(tls.CommProtocolError, match="limit"):
            comm.recv_bytes(1)


def test_unexpected_kind_and_mismatched_tensor_are_protocol_errors(key_dir: Path) -> None:
    comm, peer = _pair(key_dir)
    with comm, peer:
        peer.sendall(_frame(codec.KIND_OBJECT, tls.encode_object("hello")))
        with pytest.raises(tls.CommProtocolError, match="expected a tensor"):
            comm.recv(torch.zeros(1, dtype=torch.int64), 1)
    comm, peer = _pair(key_dir)
    with comm, peer:
        peer.sendall(_frame(codec.KIND_TENSOR, bytes(16), code=1, dims=(2,)))
        with pytest.raises(tls.CommProtocolError):
            comm.recv(torch.zeros(3, dtype=torch.int64), 1)


def test_partial_frames_are_reassembled_and_timeouts_apply(key_dir: Path) -> None:
    comm, peer = _pair(key_dir)
    with comm, peer:
        data = _frame(codec.KIND_TENSOR, torch.arange(5, dtype=torch.int64).numpy().tobytes(), code=1, dims=(5,))
        sender = threading.Thread(target=lambda: [peer.sendall(data[i : i + 3]) or time.sleep(0.001) for i in range(0, len(data), 3)])
        sender.start()
        assert comm.recv(torch.zeros(5, dtype=torch.int64), 1).tolist() == [0, 1, 2, 3, 4]
        sender.join()
        peer.sendall(data[:10])  # half a header, then silence
        start = time.monotonic()
        with pytest.raises(tls.CommTimeoutError):
            comm.recv(torch.zeros(5, dtype=torch.int64), 1)
        assert time.monotonic() - start < 5


def test_frames_straddling_the_staging_buffer_and_larger_than_it_arrive_intact(key_dir: Path) -> None:
    # 60-byte frames do not divide the staging buffer, so some straddle its end (the buffered start is
    # moved to the front); a payload bigger than the buffer is copied in part and read straight in part.
    small = [torch.arange(i, i + 5, dtype=torch.int64) for i in range(3 * link._RECV_BUFFER // 60)]
    big = torch.arange(link._RECV_BUFFER // 4 + 3, dtype=torch.int64)
    stream = b"".join(_frame(codec.KIND_TENSOR, t.numpy().tobytes(), code=1, dims=(5,)) for t in small)
    stream += _frame(codec.KIND_TENSOR, big.numpy().tobytes(), code=1, dims=(big.numel(),)) + stream[:600]
    comm, peer = _pair(key_dir)
    with comm, peer:
        sender = threading.Thread(target=peer.sendall, args=(stream,))
        sender.start()
        for tensor in small:
            assert torch.equal(comm.recv(torch.zeros(5, dtype=torch.int64), 1), tensor)
        assert torch.equal(comm.recv(torch.zeros_like(big), 1), big)
        for tensor in small[:10]:
            assert torch.equal(comm.recv(torch.zeros(5, dtype=torch.int64), 1), tensor)
        sender.join()
        assert comm.stats().links[1].messages_received == len(small) + 11


def test_peer_closing_mid_message_is_a_disconnect(key_dir: Path) -> None:
    comm, peer = _pair(key_dir)
    with comm:
        peer.sendall(_frame(codec.KIND_TENSOR, bytes(80), code=1, dims=(10,))[:30])
        peer.close()
        with pytest.raises(tls.PeerDisconnectedError, match="mid-message"):
            comm.recv(torch.zeros(10, dtype=torch.int64), 1)


_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.float64, torch.float32, torch.float16]


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 5), max_size=4),
    seed=st.integers(0, 2**31),
    transposed=st.booleans(),
)
def test_any_supported_tensor_crosses_a_link_bit_exactly(key_dir: Path, dtype: torch.dtype, shape: list[int],
                                                         seed: int, transposed: bool) -> None:
    a, b = socket.socketpair()
    ports = [1, 2]
    with tls.TlsCommunicator(mw.make_config(key_dir, 0, 2, ports), {1: a}) as zero, \
            tls.TlsCommunicator(mw.make_config(key_dir, 1, 2, ports), {0: b}) as one:  # type: ignore[dict-item]
        count = math.prod(shape)
        raw = torch.randint(0, 256, (count * dtype.itemsize,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        if dtype == torch.bool:
            raw = raw % 2
        tensor = raw.view(dtype).reshape(shape)
        if transposed and tensor.dim() >= 2:
            tensor = tensor.transpose(0, 1)
        zero.isend(tensor, 1).wait()
        received = one.recv(torch.empty_like(tensor), 0)
        assert received.dtype == tensor.dtype and received.shape == tensor.shape
        assert received.reshape(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist()


def test_posted_receives_fill_in_posting_order_even_when_waited_out_of_order(key_dir: Path) -> None:
    a, b = socket.socketpair()
    ports = [1, 2]
    with tls.TlsCommunicator(mw.make_config(key_dir, 0, 2, ports), {1: a}) as zero, \
            tls.TlsCommunicator(mw.make_config(key_dir, 1, 2, ports), {0: b}) as one:  # type: ignore[dict-item]
        sends = [zero.isend(torch.full((2,), i, dtype=torch.int64), 1) for i in range(3)]
        zero.send_obj({"after": "tensors"}, 1)
        buffers = [torch.zeros(2, dtype=torch.int64) for _ in range(3)]
        posted = [one.irecv(buffer, 0) for buffer in buffers]
        posted[2].wait()
        posted[0].wait()
        assert [b.tolist() for b in buffers] == [[0, 0], [1, 1], [2, 2]] and posted[1].is_completed()
        assert one.recv_obj(0) == {"after": "tensors"}
        for send in sends:
            send.wait()
        stats = one.stats()
        assert stats.rounds == 4 and stats.links[0].messages_received == 4 and stats.links[0].rounds == 4



# --- resource limits: frame sizes and inbox depth ----------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", ["tensor", "bytes"])
def test_default_limit_refuses_an_oversized_header_before_allocating(key_dir: Path, kind: str) -> None:
    comm, peer = _pair(key_dir)
    over = tls.MAX_MESSAGE_BYTES + 1
    int8 = DTYPE_CODES[torch.int8]
    header = (codec.FRAME.pack(codec.KIND_TENSOR, int8, 1, 0, over) + codec.DIM.pack(over) if kind == "tensor"
              else codec.FRAME.pack(codec.KIND_BYTES, 0, 0, 0, over))
    before = _peak_rss_mib()
    with comm, peer:
        assert comm.config.max_message_bytes == tls.MAX_MESSAGE_BYTES
        peer.sendall(header)
        with pytest.raises(tls.MessageTooLargeError, match="limit") as raised:
            if kind == "tensor":
                comm.recv(torch.zeros(1, dtype=torch.int8), 1)
            else:
                comm.recv_bytes(1)
        assert isinstance(raised.value, tls.CommProtocolError)
        with pytest.raises(tls.MessageTooLargeError):  # the link stays failed
            comm.send_bytes(b"x", 1)
    assert _peak_rss_mib() - before < 256  # nothing near the announced 2 GiB was set aside


def test_message_limit_covers_the_largest_smollm2_frames() -> None:
    # the service's longest prompt is the one whose party-0 one-hot share fits the 1 GiB envelope cap
    vocab, heads = 49152, 9
    longest = (envelope.DEFAULT_MAX_PAYLOAD - 64) // (8 * vocab)
    assert longest >= 2730
    one_hot_rows = longest * vocab * 8
    softmax_correction = 24 * heads * longest**2 + 4096  # dealer reply: 3 int64 per score plus its header
    assert max(one_hot_rows, softmax_correction, vocab * 576 * 8) < tls.MAX_MESSAGE_BYTES


def _flood(peer: socket.socket, frames: list[bytes]) -> threading.Thread:
    thread = threading.Thread(target=lambda: peer.sendall(b"".join(frames)), daemon=True)
    thread.start()
    return thread


def test_a_flooding_peer_is_held_back_at_the_inbox_bound_and_nothing_is_lost(key_dir: Path) -> None:
    comm, peer = _pair(key_dir, max_inbox_messages=8)
    with comm, peer:
        frames = [_frame(codec.KIND_TENSOR, torch.tensor([i], dtype=torch.int64).numpy().tobytes(), code=1, dims=(1,))
                  for i in range(20_000)]
        flooder = _flood(peer, frames)
        held = comm._links[1]
        # let the engine run while the program takes nothing
        with pytest.raises(tls.CommTimeoutError):
            comm._engine.progress(lambda: False, 0.5, "nothing")
        assert len(held.inbox) == 8 and flooder.is_alive()  # the rest waits in the kernel: the peer is blocked
        got = [int(comm.recv(torch.zeros(1, dtype=torch.int64), 1)) for _ in range(len(frames))]
        assert got == list(range(len(frames)))
        flooder.join(5)
        assert not flooder.is_alive() and held.error is None


def test_buffered_bytes_are_bounded_by_the_message_limit(key_dir: Path) -> None:
    comm, peer = _pair(key_dir, max_message_bytes=1024)
    with comm, peer:
        frames = [_frame(codec.KIND_BYTES, bytes([i % 256]) * 600) for i in range(2_000)]  # 1.2 MB in all
        flooder = _flood(peer, frames)
        held = comm._links[1]
        with pytest.raises(tls.CommTimeoutError):
            comm._engine.progress(lambda: False, 0.5, "nothing")
        assert len(held.inbox) == 1 and held.inbox_bytes <= 1024
        for i in range(len(frames)):
            assert comm.recv_bytes(1) == bytes([i % 256]) * 600
            assert held.inbox_bytes <= 1024
        flooder.join(5)
        assert not flooder.is_alive()


def test_held_link_does_not_spin_and_other_links_keep_flowing(key_dir: Path) -> None:
    """Rank 0 with links to 1 (flooding, held) and 2 (a real exchange): 2's message still arrives."""
    flood_ours, flood_theirs = socket.socketpair()
    ours, theirs = socket.socketpair()
    config = mw.make_config(key_dir, 0, 3, [1, 2, 3], recv_timeout_s=5.0, max_inbox_messages=4)
    with tls.TlsCommunicator(config, {1: flood_ours, 2: ours}) as comm, flood_theirs, theirs:  # type: ignore[dict-item]
        flooder = _flood(flood_theirs, [_frame(codec.KIND_BARRIER)] * 200_000)
        time.sleep(0.3)
        cpu = time.process_time()
        start = time.monotonic()
        threading.Timer(0.5, lambda: theirs.sendall(_frame(codec.KIND_OBJECT, tls.encode_object("late")))).start()
        assert comm.recv_obj(2) == "late"
        waited, spent = time.monotonic() - start, time.process_time() - cpu
        assert waited >= 0.4 and spent < 0.5 * waited  # it slept in select, not in a loop over the held socket
        assert len(comm._links[1].inbox) == 4
        for _ in range(200_000):
            comm._links[1].post(codec.KIND_BARRIER, lambda item: None).wait()
        flooder.join(5)
        assert not flooder.is_alive()


# --- mesh set-up under strangers' connections, and TLS 1.3 only --------------------------------------


def _open_when_listening(port: int, deadline_s: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _strangers(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never authenticate: half silent, half stalled inside a ClientHello."""
    sockets = [_open_when_listening(port)]
    sockets += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count - 1)]
    for sock in sockets[::2]:
        sock.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header announcing a ClientHello that never comes
    return sockets


def _connect_in_thread(config: tls.TlsCommConfig, listener: socket.socket | None = None) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["comm"] = tls.TlsCommunicator.connect(config, listener=listener)
        except tls.CommError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_idle_connections_to_the_listener_do_not_delay_the_real_peer(key_dir: Path) -> None:
    ports = free_ports(2)
    process, queue = mw.start(mw.connect_timed, 0, (key_dir, ports, 2, {"connect_timeout_s": 30.0}))
    # more strangers than the listener keeps pending handshakes for, all there before the real peer
    strangers = _strangers(ports[0], mesh._MAX_PENDING_HANDSHAKES + 16)
    try:
        joined = mw.launch(mw.connect_timed, [1], (key_dir, ports, 2, {"connect_timeout_s": 30.0}))
        _, status, listener_side = queue.get(timeout=30)
    finally:
        for sock in strangers:
            sock.close()
    process.join(5)
    status_1, dialer_side = joined[1]
    assert status == "ok" and listener_side["error"] is None and listener_side["sum"] == [3], listener_side
    assert status_1 == "ok" and dialer_side["error"] is None and dialer_side["sum"] == [3], dialer_side
    # in before any stranger's handshake slot even expired (serial accepts took 10 s per stranger)
    assert dialer_side["elapsed"] < mesh._ACCEPT_HANDSHAKE_S, dialer_side


def _closed_by_peer_after(sock: socket.socket, trickle: bool) -> float:
    """Seconds until the listener drops ``sock``; with ``trickle`` it keeps feeding a well-formed
    ClientHello record one byte every 0.3 s, so only the absolute deadline can end it."""
    start = time.monotonic()
    sock.settimeout(0.3)
    if trickle:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # record header (512 bytes to come), ClientHello type
    while time.monotonic() - start < 15:
        try:
            if trickle:
                sock.sendall(b"\x00")
            if sock.recv(1) == b"":
                break
        except TimeoutError:
            continue
        except OSError:  # reset
            break
    return time.monotonic() - start


@pytest.mark.parametrize("trickle", [False, True], ids=["idle", "slowloris"])
def test_unauthenticated_connections_are_dropped_within_seconds(key_dir: Path, trickle: bool) -> None:
    listener = tls.bind_listener("127.0.0.1", 0)
    ports = [listener.getsockname()[1], free_ports(1)[0]]
    thread, result = _connect_in_thread(mw.make_config(key_dir, 0, 2, ports, connect_timeout_s=20.0), listener)
    with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as stranger:
        elapsed = _closed_by_peer_after(stranger, trickle)
    assert mesh._ACCEPT_HANDSHAKE_S - 0.5 < elapsed < mesh._ACCEPT_HANDSHAKE_S + 2.0
    # the listener is still waiting for its real peer, which joins
    with tls.TlsCommunicator.connect(mw.make_config(key_dir, 1, 2, ports, connect_timeout_s=10.0)) as one:
        thread.join(10)
        with result["comm"] as zero:
            one.send_obj("hello", 0)
            assert zero.recv_obj(1) == "hello"


def test_dials_run_concurrently_so_a_stalled_lower_rank_delays_no_other_link(key_dir: Path) -> None:
    # rank 0's port takes TCP connections but never answers a handshake (bound, never accepting)
    stalled = tls.bind_listener("127.0.0.1", 0)
    listener_1 = tls.bind_listener("127.0.0.1", 0)
    ports = [stalled.getsockname()[1], listener_1.getsockname()[1], free_ports(1)[0]]
    thread, result = _connect_in_thread(mw.make_config(key_dir, 1, 3, ports, connect_timeout_s=4.0), listener_1)
    with stalled, pytest.raises(tls.CommTimeoutError) as raised:
        tls.TlsCommunicator.connect(mw.make_config(key_dir, 2, 3, ports, connect_timeout_s=4.0))
    thread.join(10)
    # rank 2's link to rank 1 formed while its dial to rank 0 hung: only rank 0 is missing, on both sides
    assert "ranks [0]" in str(raised.value)
    assert isinstance(result["error"], tls.CommTimeoutError) and "ranks [0]" in str(result["error"])


def test_data_plane_contexts_require_tls_1_3(key_dir: Path) -> None:
    credentials = keys.load_node_credentials(key_dir, "party0")
    for context in (tls.server_context(credentials), tls.client_context(credentials, False)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_tls_1_2_only_client_is_refused_and_the_real_peer_still_joins(key_dir: Path) -> None:
    listener = tls.bind_listener("127.0.0.1", 0)
    ports = [listener.getsockname()[1], free_ports(1)[0]]
    thread, result = _connect_in_thread(mw.make_config(key_dir, 0, 2, ports, connect_timeout_s=20.0), listener)
    credentials = keys.load_node_credentials(key_dir, "party1")  # a valid certificate of the right role
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_cert_chain(credentials.cert_path, credentials.key_path)
    old.load_verify_locations(cafile=str(credentials.ca_path))
    old.check_hostname = False
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        old.wrap_socket(_open_when_listening(ports[0]))
    with tls.TlsCommunicator.connect(mw.make_config(key_dir, 1, 2, ports, connect_timeout_s=10.0)) as one:
        thread.join(10)
        with result["comm"] as zero:
            one.send_obj("over TLS 1.3", 0)
            assert zero.recv_obj(1) == "over TLS 1.3"


def test_dialer_refuses_a_tls_1_2_only_listener(key_dir: Path) -> None:
    credentials = keys.load_node_credentials(key_dir, "party0")  # right CA and role, old protocol
    listener = tls.bind_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]

    def serve() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(credentials.cert_path, credentials.key_path)
        listener.settimeout(10)
        try:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as sock:
                sock.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    config = mw.make_config(key_dir, 1, 2, [port, free_ports(1)[0]], connect_timeout_s=5.0)
    with pytest.raises(tls.PeerAuthError, match="TLS 1.3"):
        tls.TlsCommunicator.connect(config)
    listener.close()
    thread.join(5)


def test_authenticated_peer_announcing_a_huge_frame_over_tls_is_refused(key_dir: Path) -> None:
    listener = tls.bind_listener("127.0.0.1", 0)
    ports = [listener.getsockname()[1], free_ports(1)[0]]
    thread, result = _connect_in_thread(mw.make_config(key_dir, 0, 2, ports, connect_timeout_s=20.0), listener)
    with tls.TlsCommunicator.connect(mw.make_config(key_dir, 1, 2, ports, connect_timeout_s=10.0)) as one:
        thread.join(10)
        with result["comm"] as zero:
            # rank 1 writes a raw header on its own TLS link: 2^62 int64s announced, none sent
            raw = one._links[0].sock
            raw.setblocking(True)
            raw.sendall(codec.FRAME.pack(codec.KIND_TENSOR, DTYPE_CODES[torch.int64], 1, 0, 1 << 62) + codec.DIM.pack(1 << 59))
            before = _peak_rss_mib()
            start = time.monotonic()
            with pytest.raises(tls.MessageTooLargeError) as raised:
                zero.recv(torch.zeros(1, dtype=torch.int64), 1)
            assert time.monotonic() - start < 2.0 and _peak_rss_mib() - before < 256
            assert f"limit {tls.MAX_MESSAGE_BYTES}" in str(raised.value)
