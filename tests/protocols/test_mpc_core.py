"""Protocol correctness of the MPC core: CSPRNG, channel, sharing, dealer tuples, fixed operands.

MPC cases run in one long-lived local world (two parties and a dealer as processes), so hypothesis
can try many random shapes and values without paying process start-up for each.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfer.protocols.channel import Channel, ChannelError, Message, decode
from pinfer.protocols.csprng import AesCtrStream, fresh_seed
from pinfer.protocols.sharing import SCALE, encode, share
from pinfer.protocols.world import LocalWorld, WorldError

MPC = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---- jobs run on the parties (module-level so spawned processes can import them) -------------

def job_arithmetic(ctx, x, y, w):
    import crypten

    a = crypten.cryptensor(x, src=0)
    b = crypten.cryptensor(y, src=1)
    m = crypten.cryptensor(w, src=1)
    return {
        "reconstruct": a.get_plain_text(),
        "add": (a + b).get_plain_text(),
        "mul": (a * b).get_plain_text(),
        "public_mul": (a * 0.37).get_plain_text(),
        "matmul": (a @ m).get_plain_text(),
        "square": a.square().get_plain_text(),
        "lt": (a < b).get_plain_text(),
        "argmax": a.argmax(dim=-1, one_hot=True).get_plain_text(),
    }


def job_fixed_operand(ctx, x, w, extra, onehot):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols.fixed_operand import FixedOperand

    operand = FixedOperand(ctx.provider, crypten.cryptensor(w, src=0))
    first = operand.rmatmul(crypten.cryptensor(x, src=1)).get_plain_text()
    second = operand.rmatmul(crypten.cryptensor(2 * x, src=1)).get_plain_text()
    operand.extend(crypten.cryptensor(extra, src=0), dim=1)
    stats = comm.get()
    before = stats.comm_bytes
    extended = operand.rmatmul(crypten.cryptensor(x, src=1)).get_plain_text()
    forward_bytes = stats.comm_bytes - before
    rows = crypten.cryptensor(onehot, src=1) < 0.5  # comparison output: scale 1, values 0/1
    selected = operand.rmatmul(1 - rows).get_plain_text()
    before = stats.comm_bytes
    z = crypten.cryptensor(extended, src=1)
    transposed = operand.rmatmul(z, transposed=True).get_plain_text()  # same mask, other side
    transposed_bytes = stats.comm_bytes - before
    operand.release()
    return {"first": first, "second": second, "extended": extended, "selected": selected,
            "transposed": transposed, "transposed_bytes": transposed_bytes, "forward_bytes": forward_bytes}


def job_kv_layer(ctx, keys, values, queries, steps):
    """A cache layer over ``steps`` appends: rounds of each append + scores + mix, and the outputs."""
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols.fixed_operand import OpeningQueue
    from pinfer.protocols.mpc_ops import MpcKVLayer

    layer = MpcKVLayer(ctx.provider, OpeningQueue())
    stats, rounds, scores, mixed = comm.get(), [], [], []
    for t in range(steps):
        k, v = crypten.cryptensor(keys[:, t : t + 1], src=0), crypten.cryptensor(values[:, t : t + 1], src=0)
        q = crypten.cryptensor(queries[:, t : t + 1], src=1)
        weights = crypten.cryptensor(torch.ones(q.shape[0], 1, t + 1) / (t + 1), src=1)
        before = stats.comm_rounds
        layer.append(k, v)
        score = layer.scores(q)
        mix = layer.mix(weights)
        rounds.append(stats.comm_rounds - before)
        scores.append(score.get_plain_text())
        mixed.append(mix.get_plain_text())
    length = layer.length
    layer.release()
    return {"rounds": rounds, "scores": scores, "mixed": mixed, "length": length}


def job_provider_state(ctx):
    import crypten
    import crypten.mpc

    try:
        crypten.cfg["mpc.provider"] = "TFP"
        crypten.mpc.get_default_provider()
        tfp_reachable = True
    except KeyError:
        tfp_reachable = False
    finally:
        crypten.cfg["mpc.provider"] = "DEALER"
    return {"provider": type(crypten.mpc.get_default_provider()).__name__, "tfp_reachable": tfp_reachable,
            "generators": sorted({type(g[next(iter(g))]).__name__ for g in crypten.generators.values()})}


def job_fail(ctx):
    raise RuntimeError("job failed on purpose")


# ---- fixtures and strategies -----------------------------------------------------------------

def matrices(rows: int, cols: int, bound: float = 8.0):
    return st.lists(
        st.floats(-bound, bound, allow_nan=False, width=32), min_size=rows * cols, max_size=rows * cols
    ).map(lambda v: torch.tensor(v, dtype=torch.float32).reshape(rows, cols))


dims = st.integers(1, 6)


# ---- plaintext primitives ----------------------------------------------------------------------

def test_stream_is_deterministic_per_seed_and_differs_across_seeds():
    seed = fresh_seed()
    assert torch.equal(AesCtrStream(seed).ring_elements((5, 7)), AesCtrStream(seed).ring_elements((5, 7)))
    assert not torch.equal(AesCtrStream(seed).ring_elements((64,)), AesCtrStream(fresh_seed()).ring_elements((64,)))


@given(st.lists(st.integers(0, 300_000), max_size=12))
@settings(max_examples=40, deadline=None)
def test_stream_is_the_aes_ctr_keystream_however_draws_are_split(sizes):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = fresh_seed()
    keystream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(sum(sizes)))
    stream = AesCtrStream(seed)
    assert b"".join(stream.random_bytes(size) for size in sizes) == keystream


def test_stream_bits_are_in_range_and_balanced():
    bits = AesCtrStream(fresh_seed()).bits((20000,), 1)
    assert set(bits.unique().tolist()) == {0, 1}
    assert 0.45 < bits.float().mean().item() < 0.55
    wide = AesCtrStream(fresh_seed()).bits((1000,), 20)
    assert wide.min() >= 0 and wide.max() < 2**20


def test_stream_rejects_wrong_seed_length():
    with pytest.raises(ValueError):
        AesCtrStream(b"short")


@given(st.data())
@settings(max_examples=30, deadline=None)
def test_channel_round_trip(data):
    shapes = data.draw(st.lists(st.lists(st.integers(0, 4), max_size=3), max_size=3))
    tensors = [torch.randint(-2**62, 2**62, tuple(s)) for s in shapes]

    class Pipe:
        def __init__(self):
            self.items = []

        def send_parts(self, parts):
            self.items.append(b"".join(parts))

        def recv_bytes(self):
            return self.items.pop(0)

    channel = Channel(Pipe())
    channel.send(Message("triple", {"op": "matmul", "size0": [1, 2]}, tensors))
    received = channel.recv()
    assert received.kind == "triple" and received.params == {"op": "matmul", "size0": [1, 2]}
    assert all(torch.equal(a, b) for a, b in zip(tensors, received.tensors))
    assert channel.stats.bytes_sent == channel.stats.bytes_received > 0
    channel.send(Message("triple", {}, tensors))
    payload = bytearray(channel._transport.recv_bytes())  # what the TLS link hands over
    in_place = decode(payload)
    assert all(torch.equal(a, b) for a, b in zip(tensors, in_place.tensors))
    base = np.frombuffer(payload, dtype=np.uint8).ctypes.data
    assert all(base <= t.data_ptr() < base + len(payload) and t.data_ptr() % 8 == 0
               for t in in_place.tensors if t.numel())  # views of the buffer, aligned


@pytest.mark.parametrize("payload", [
    b"", b"\x01\x00", b"\xff\xff\xff\x7f{}", b"\x02\x00\x00\x00{}", b"\x0b\x00\x00\x00not json!!!",
    b'\x2b\x00\x00\x00{"kind": "x", "params": {}, "shapes": [[4]]}' + b"\x00" * 8,
    b'\x29\x00\x00\x00{"kind": "x", "params": {}, "shapes": []}' + b"\x00",
    b'\x2c\x00\x00\x00{"kind": "x", "params": {}, "shapes": [[-1]]}',
])
def test_channel_rejects_malformed_messages(payload):
    with pytest.raises(ChannelError):
        decode(payload)


@given(matrices(3, 4, bound=1000.0), st.integers(2, 3))
@settings(max_examples=25, deadline=None)
def test_shares_reconstruct_the_encoding(values, n_parties):
    bundles = share({"w": values}, n_parties)
    assert bundles[0].seed is None and all(b.seed is not None for b in bundles[1:])
    total = sum(b.expand()["w"] for b in bundles)
    assert torch.equal(total, encode(values))
    assert (total.double() / SCALE - values.double()).abs().max() <= 0.5 / SCALE


def test_encode_rejects_values_outside_the_ring():
    with pytest.raises(ValueError):
        encode(torch.tensor([1e15]))


# ---- MPC protocols on two parties and a dealer -------------------------------------------------

@pytest.mark.slow
@given(st.data())
@MPC
def test_arithmetic_comparison_and_argmax_on_shares(world, data):
    rows, cols, inner = data.draw(dims), data.draw(dims), data.draw(dims)
    x = data.draw(matrices(rows, cols))
    y = data.draw(matrices(rows, cols))
    w = data.draw(matrices(cols, inner))
    out = world.run(job_arithmetic, x, y, w)[0]
    tol = 4e-4 * (1 + cols)
    assert torch.allclose(out["reconstruct"], x, atol=2 / SCALE)
    assert torch.allclose(out["add"], x + y, atol=4 / SCALE)
    assert torch.allclose(out["mul"], x * y, atol=tol)
    assert torch.allclose(out["public_mul"], x * 0.37, atol=1e-4)
    assert torch.allclose(out["matmul"], x @ w, atol=tol * 8)
    assert torch.allclose(out["square"], x * x, atol=tol)
    far = (x - y).abs() > 1e-3
    assert torch.equal(out["lt"][far], (x < y).float()[far])
    assert torch.equal(out["argmax"].sum(dim=-1), torch.ones(rows))
    top2 = x.topk(min(2, cols), dim=-1).values
    clear = cols == 1 or bool(((top2[:, 0] - top2[:, -1]) > 1e-3).all())
    if clear:
        assert torch.equal(out["argmax"].argmax(dim=-1), x.argmax(dim=-1))


@pytest.mark.slow
@given(st.data())
@MPC
def test_fixed_operand_products_reuse_the_opened_mask(world, data):
    rows, inner, cols, more = data.draw(dims), data.draw(dims), data.draw(dims), data.draw(dims)
    x = data.draw(matrices(rows, inner))
    w = data.draw(matrices(inner, cols))
    extra = data.draw(matrices(inner, more))
    onehot = torch.nn.functional.one_hot(torch.randint(0, inner, (rows,)), inner).float()
    out = world.run(job_fixed_operand, x, w, extra, onehot)[0]
    tol = 3e-4 * (1 + inner)
    assert torch.allclose(out["first"], x @ w, atol=tol)
    assert torch.allclose(out["second"], 2 * x @ w, atol=2 * tol)
    assert torch.allclose(out["extended"], x @ torch.cat([w, extra], dim=1), atol=tol)
    assert torch.allclose(out["selected"], onehot @ torch.cat([w, extra], dim=1), atol=2 / SCALE)
    both = torch.cat([w, extra], dim=1)
    assert torch.allclose(out["transposed"], out["extended"] @ both.T, atol=tol * (1 + both.abs().max()) * (cols + more))
    # z @ W^T opens z and truncates the output, as many elements as x @ W opens and truncates: W is
    # never reopened from either side
    assert out["transposed_bytes"] == out["forward_bytes"]


def test_cache_rows_open_with_the_queries_in_one_round(world):
    gen = torch.Generator().manual_seed(5)
    heads, dim, steps = 2, 8, 3
    keys, values, queries = (torch.randn(heads, steps, dim, generator=gen) for _ in range(3))
    out = world.run(job_kv_layer, keys, values, queries, steps)[0]
    # each step: new key and value rows opened with the query (one round), the mix's input (one)
    assert out["rounds"] == [2] * steps and out["length"] == steps
    for t in range(steps):
        score = queries[:, t : t + 1] @ keys[:, : t + 1].transpose(1, 2)
        assert torch.allclose(out["scores"][t], score, atol=1e-3)
        assert torch.allclose(out["mixed"][t], values[:, : t + 1].mean(dim=1, keepdim=True), atol=1e-3)


@pytest.mark.slow
def test_parties_use_only_the_dealer_and_csprng_streams(world):
    for state in world.run(job_provider_state):
        assert state == {"provider": "DealerProvider", "tfp_reachable": False, "generators": ["AesCtrStream"]}


def test_a_failing_job_stops_the_world_with_a_clear_error():
    world = LocalWorld(n_parties=2)
    with pytest.raises(WorldError, match="job failed on purpose"):
        world.run(job_fail)
    world.close()
    assert all(not p.is_alive() for p in world._processes)
