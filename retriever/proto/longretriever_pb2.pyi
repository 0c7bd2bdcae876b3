from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrieveRequest(_message.Message):
    __slots__ = ("user_id", "k", "max_contexts", "exclude_seen", "include_seen")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    max_contexts: int
    exclude_seen: bool
    include_seen: bool
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., max_contexts: _Optional[int] = ..., exclude_seen: bool = ..., include_seen: bool = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "score", "context")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    score: float
    context: str
    def __init__(self, item_id: _Optional[int] = ..., score: _Optional[float] = ..., context: _Optional[str] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("candidates", "model_version", "watermark", "fallback")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    model_version: str
    watermark: str
    fallback: bool
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., model_version: _Optional[str] = ..., watermark: _Optional[str] = ..., fallback: bool = ...) -> None: ...

class GetUserSequenceRequest(_message.Message):
    __slots__ = ("user_id", "context", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    context: str
    limit: int
    def __init__(self, user_id: _Optional[int] = ..., context: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("item_id", "ts", "context")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    ts: int
    context: str
    def __init__(self, item_id: _Optional[int] = ..., ts: _Optional[int] = ..., context: _Optional[str] = ...) -> None: ...

class GetUserSequenceResponse(_message.Message):
    __slots__ = ("user_id", "events", "watermark", "total")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    watermark: str
    total: int
    def __init__(self, user_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., watermark: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...
