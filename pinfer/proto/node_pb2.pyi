from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeDescription(_message.Message):
    __slots__ = ("role", "models", "slots", "active_sessions")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    role: str
    models: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    active_sessions: int
    def __init__(self, role: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., active_sessions: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("rank", "host", "port")
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    rank: int
    host: str
    port: int
    def __init__(self, rank: _Optional[int] = ..., host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("session_id", "model", "parties")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    parties: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., parties: _Optional[int] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("endpoints", "input_share", "prompt_tokens", "max_new_tokens", "kv_policy", "kv_budget")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHARE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    input_share: bytes
    prompt_tokens: int
    max_new_tokens: int
    kv_policy: str
    kv_budget: float
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., input_share: _Optional[bytes] = ..., prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., kv_policy: _Optional[str] = ..., kv_budget: _Optional[float] = ...) -> None: ...

class SessionControl(_message.Message):
    __slots__ = ("open", "start")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    start: StartSession
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., start: _Optional[_Union[StartSession, _Mapping]] = ...) -> None: ...

class WorkerReady(_message.Message):
    __slots__ = ("host", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class TokenShare(_message.Message):
    __slots__ = ("step", "phase", "envelope")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    step: int
    phase: str
    envelope: bytes
    def __init__(self, step: _Optional[int] = ..., phase: _Optional[str] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class SessionDone(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("ready", "token", "done")
    READY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ready: WorkerReady
    token: TokenShare
    done: SessionDone
    def __init__(self, ready: _Optional[_Union[WorkerReady, _Mapping]] = ..., token: _Optional[_Union[TokenShare, _Mapping]] = ..., done: _Optional[_Union[SessionDone, _Mapping]] = ...) -> None: ...

class WorkerEvent(_message.Message):
    __slots__ = ("ready_port", "token", "done", "invalid", "failed")
    READY_PORT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ready_port: int
    token: TokenShare
    done: SessionDone
    invalid: str
    failed: str
    def __init__(self, ready_port: _Optional[int] = ..., token: _Optional[_Union[TokenShare, _Mapping]] = ..., done: _Optional[_Union[SessionDone, _Mapping]] = ..., invalid: _Optional[str] = ..., failed: _Optional[str] = ...) -> None: ...
