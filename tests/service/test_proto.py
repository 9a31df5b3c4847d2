"""The wire protocol: committed stubs match the .proto files, and messages are typed (no pickle)."""

from __future__ import annotations

from pathlib import Path

from pinfer.proto import build, inference_pb2, node_pb2

PROTO_DIR = Path(build.__file__).parent


def test_committed_stubs_are_regenerated_by_one_command(tmp_path: Path) -> None:
    generated = build.build(tmp_path)
    assert generated
    for path in generated:
        assert path.read_text() == (PROTO_DIR / path.name).read_text(), f"{path.name} is stale: run python -m pinfer.proto.build"


def test_versioned_package_and_no_opaque_payloads() -> None:
    assert inference_pb2.DESCRIPTOR.package == "pinfer.v1"
    assert node_pb2.DESCRIPTOR.package == "pinfer.v1"
    for proto in PROTO_DIR.glob("*.proto"):
        text = proto.read_text()
        assert "google.protobuf.Any" not in text and "pickle" not in text.lower()


def test_round_trip_of_a_generate_event() -> None:
    event = inference_pb2.GenerateEvent(step=3, phase="decode", token_shares=[b"a", b"b"])
    again = inference_pb2.GenerateEvent.FromString(event.SerializeToString())
    assert again == event
