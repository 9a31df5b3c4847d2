from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "tokenizer", "vocab_size", "context_length", "max_new_tokens", "kv_policy", "kv_budget", "deployment", "card", "kv_policies")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    KV_POLICIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    tokenizer: str
    vocab_size: int
    context_length: int
    max_new_tokens: int
    kv_policy: str
    kv_budget: int
    deployment: bytes
    card: bytes
    kv_policies: _containers.RepeatedCompositeFieldContainer[KVPolicyInfo]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., tokenizer: _Optional[str] = ..., vocab_size: _Optional[int] = ..., context_length: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., kv_policy: _Optional[str] = ..., kv_budget: _Optional[int] = ..., deployment: _Optional[bytes] = ..., card: _Optional[bytes] = ..., kv_policies: _Optional[_Iterable[_Union[KVPolicyInfo, _Mapping]]] = ...) -> None: ...

class KVPolicyInfo(_message.Message):
    __slots__ = ("name", "default_budget", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_budget: float
    description: str
    def __init__(self, name: _Optional[str] = ..., default_budget: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "request_id", "input_shares", "prompt_tokens", "max_new_tokens", "kv_policy", "kv_budget")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHARES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    input_shares: _containers.RepeatedScalarFieldContainer[bytes]
    prompt_tokens: int
    max_new_tokens: int
    kv_policy: str
    kv_budget: float
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., input_shares: _Optional[_Iterable[bytes]] = ..., prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., kv_policy: _Optional[str] = ..., kv_budget: _Optional[float] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("step", "phase", "token_shares")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SHARES_FIELD_NUMBER: _ClassVar[int]
    step: int
    phase: str
    token_shares: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, step: _Optional[int] = ..., phase: _Optional[str] = ..., token_shares: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...
