"""The data plane's typed failures: every error a link, the mesh or the codec raises."""

from __future__ import annotations


class CommError(RuntimeError):
    """Base class of data-plane failures. Messages name ranks and sizes, never payload bytes."""


class CommTimeoutError(CommError):
    """A connection or a message did not arrive within its deadline."""


class PeerAuthError(CommError):
    """A peer failed TLS verification, presented the wrong role, or claimed a rank or session it is not."""


class PeerDisconnectedError(CommError):
    """The link to a peer broke or was closed while messages were still expected."""


class CommProtocolError(CommError):
    """A peer sent a frame that does not fit what the local program expects (kind, dtype, size)."""


class MessageTooLargeError(CommProtocolError):
    """A peer announced a frame over ``max_message_bytes`` (or one this host cannot allocate); refused
    from its header, before any memory is set aside for it."""


class UnsupportedObjectError(TypeError):
    """An object handed to send_obj/broadcast_obj contains a type the typed codec does not carry."""

