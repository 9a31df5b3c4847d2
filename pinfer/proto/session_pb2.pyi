from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SealedInput(_message.Message):
    __slots__ = ("request_id", "model", "parties", "party", "prompt_tokens", "max_new_tokens", "issued_at", "reply_secret", "share", "kv_policy", "kv_budget")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLY_SECRET_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    KV_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    parties: int
    party: int
    prompt_tokens: int
    max_new_tokens: int
    issued_at: int
    reply_secret: bytes
    share: bytes
    kv_policy: str
    kv_budget: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., parties: _Optional[int] = ..., party: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., issued_at: _Optional[int] = ..., reply_secret: _Optional[bytes] = ..., share: _Optional[bytes] = ..., kv_policy: _Optional[str] = ..., kv_budget: _Optional[float] = ...) -> None: ...

class TokenPayload(_message.Message):
    __slots__ = ("id_share", "seconds", "bytes_sent", "rounds", "dealer_bytes")
    ID_SHARE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DEALER_BYTES_FIELD_NUMBER: _ClassVar[int]
    id_share: int
    seconds: float
    bytes_sent: int
    rounds: int
    dealer_bytes: int
    def __init__(self, id_share: _Optional[int] = ..., seconds: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., rounds: _Optional[int] = ..., dealer_bytes: _Optional[int] = ...) -> None: ...
