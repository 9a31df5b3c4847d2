"""The TLS data plane: a CrypTen communicator over a full mesh of mutual-TLS sockets (replaces
torch.distributed/gloo).

Why: CrypTen's ``DistributedCommunicator`` sends shares, PRG seeds and dealer material over gloo in the
clear, and unpickles objects from peers. The threat model puts the network outside the trust boundary,
so every party-to-party and party-to-dealer byte travels here over TLS 1.3 with client certificates from
the deployment CA (:mod:`pinfer.keys`), and each side checks that the peer's certificate carries the role
of the rank it claims. Objects cross a link only through a small typed codec (tensors, numbers, strings,
bytes and containers of them); nothing is pickled.

One concept per module, lowest first:

- :mod:`.errors`: the typed failures (:class:`CommError` and its subclasses);
- :mod:`.config`: :class:`TlsCommConfig` (endpoints, credentials, limits) and :class:`LinkEmulation`;
- :mod:`.codec`: the frame layout, the tensor wire format and the typed object codec;
- :mod:`.stats`: traffic statistics (:class:`CommStats`, :class:`LinkStats`);
- :mod:`.link`: one connection per peer and the progress engine that drives them on the caller's thread;
- :mod:`.mesh`: TLS contexts, the hello, and forming the authenticated mesh (:func:`bind_listener`);
- :mod:`.communicator`: :class:`TlsCommunicator`, CrypTen's ``Communicator`` over the mesh, and
  :func:`install`/:func:`uninstall` into CrypTen.

The names below are the data plane's public surface; import them from this package.
"""

from .codec import decode_object, encode_object
from .communicator import PeerTransport, TlsCommunicator, install, uninstall
from .config import LAN, MAX_MESSAGE_BYTES, WAN, LinkEmulation, TlsCommConfig
from .errors import (
    CommError,
    CommProtocolError,
    CommTimeoutError,
    MessageTooLargeError,
    PeerAuthError,
    PeerDisconnectedError,
    UnsupportedObjectError,
)
from .mesh import bind_listener, client_context, server_context
from .stats import CommStats, LinkStats

__all__ = [
    "LAN",
    "MAX_MESSAGE_BYTES",
    "WAN",
    "CommError",
    "CommProtocolError",
    "CommStats",
    "CommTimeoutError",
    "LinkEmulation",
    "LinkStats",
    "MessageTooLargeError",
    "PeerAuthError",
    "PeerDisconnectedError",
    "PeerTransport",
    "TlsCommConfig",
    "TlsCommunicator",
    "UnsupportedObjectError",
    "bind_listener",
    "client_context",
    "decode_object",
    "encode_object",
    "install",
    "server_context",
    "uninstall",
]
