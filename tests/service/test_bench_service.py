"""``pinfer bench service``'s data-plane measurements and the nodes' link presets (the service part
is what tests/service/test_service.py exercises; its benchmark run is too long for the suite)."""

from __future__ import annotations

import pytest

from pinfer.bench.service import tcp_data_plane, tls_data_plane
from pinfer.parties.session_worker import link_emulation
from pinfer.protocols import tls_communicator as tc


def test_data_plane_measurements_are_positive() -> None:
    for measure in (tls_data_plane, tcp_data_plane):
        result = measure(1 << 20, 5)
        assert result["gbit_per_s"] > 0 and result["round_ms"] > 0


def test_link_presets() -> None:
    assert link_emulation("loopback") is None
    assert link_emulation("lan") == tc.LAN and link_emulation("wan") == tc.WAN
    with pytest.raises(ValueError):
        link_emulation("satellite")
