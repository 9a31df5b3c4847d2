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

class PartyKey(_message.Message):
    __slots__ = ("party", "x25519_public_key")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    party: int
    x25519_public_key: bytes
    def __init__(self, party: _Optional[int] = ..., x25519_public_key: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "tokenizer", "vocab_size", "context_length", "max_new_tokens", "kv_policy", "kv_budget", "parties", "party_keys", "eos_token_ids", "input_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    PARTY_KEYS_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    tokenizer: str
    vocab_size: int
    context_length: int
    max_new_tokens: int
    kv_policy: str
    kv_budget: int
    parties: int
    party_keys: _containers.RepeatedCompositeFieldContainer[PartyKey]
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    input_scale: int
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., tokenizer: _Optional[str] = ..., vocab_size: _Optional[int] = ..., context_length: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., kv_policy: _Optional[str] = ..., kv_budget: _Optional[int] = ..., parties: _Optional[int] = ..., party_keys: _Optional[_Iterable[_Union[PartyKey, _Mapping]]] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., input_scale: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "request_id", "client_public_key", "input_shares", "prompt_tokens", "max_new_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHARES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    client_public_key: bytes
    input_shares: _containers.RepeatedScalarFieldContainer[bytes]
    prompt_tokens: int
    max_new_tokens: int
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., client_public_key: _Optional[bytes] = ..., input_shares: _Optional[_Iterable[bytes]] = ..., prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class StepCost(_message.Message):
    __slots__ = ("party", "seconds", "bytes_sent", "rounds", "dealer_bytes")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DEALER_BYTES_FIELD_NUMBER: _ClassVar[int]
    party: int
    seconds: float
    bytes_sent: int
    rounds: int
    dealer_bytes: int
    def __init__(self, party: _Optional[int] = ..., seconds: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., rounds: _Optional[int] = ..., dealer_bytes: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("step", "phase", "token_shares", "scale", "costs")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SHARES_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    step: int
    phase: str
    token_shares: _containers.RepeatedScalarFieldContainer[bytes]
    scale: int
    costs: _containers.RepeatedCompositeFieldContainer[StepCost]
    def __init__(self, step: _Optional[int] = ..., phase: _Optional[str] = ..., token_shares: _Optional[_Iterable[bytes]] = ..., scale: _Optional[int] = ..., costs: _Optional[_Iterable[_Union[StepCost, _Mapping]]] = ...) -> None: ...

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
