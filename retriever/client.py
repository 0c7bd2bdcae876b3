"""Small synchronous gRPC client for the retriever endpoint."""

from __future__ import annotations

from typing import Any

import grpc

from longretriever.core.errors import InputError, RemoteError, ServiceUnavailable
from longretriever.core.planner import validate_request
from longretriever.retriever.proto import longretriever_pb2 as pb
from longretriever.retriever.proto import longretriever_pb2_grpc as pb_grpc


class RetrieverClient:
    def __init__(self, target: str, timeout: float = 5.0, tls_ca: bytes | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca))
                        if tls_ca is not None else grpc.insecure_channel(target))
        self.stub = pb_grpc.RetrieverStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RetrieverClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def retrieve_pb(self, user_id: int, k: int, max_contexts: int = 8, *, include_seen: bool = False,
                    timeout: float | None = None) -> pb.RetrieveResponse:
        """One Retrieve call; seen items are excluded unless ``include_seen``. Arguments the
        server would refuse raise :class:`InputError` here, before anything is sent."""
        validate_request(user_id, k, max_contexts)
        req = _request(pb.RetrieveRequest, user_id=user_id, k=k, max_contexts=max_contexts,
                       include_seen=include_seen)
        return self.stub.Retrieve(req, timeout=timeout or self.timeout)

    def retrieve(self, user_id: int, k: int, max_contexts: int = 8, *, include_seen: bool = False,
                 timeout: float | None = None) -> dict[str, Any]:
        """The response as the JSON shape printed by ``longretriever query --json``."""
        try:
            r = self.retrieve_pb(user_id, k, max_contexts, include_seen=include_seen, timeout=timeout)
        except grpc.RpcError as exc:
            raise _mapped(exc, self.target) from exc
        return {"user_id": user_id, "model_version": r.model_version, "watermark": r.watermark,
                "fallback": r.fallback,
                "candidates": [{"item_id": c.item_id, "score": c.score, "context": c.context}
                               for c in r.candidates]}

    def user_sequence(self, user_id: int, context: str | None = None, limit: int = 0,
                      timeout: float | None = None) -> dict[str, Any]:
        """The newest ``limit`` events (0: the server's default, 1000), oldest first; ``ts``
        in milliseconds since the epoch; ``total`` = events stored."""
        req = _request(pb.GetUserSequenceRequest, user_id=user_id, limit=limit)
        if context is not None:
            req.context = context
        try:
            r = self.stub.GetUserSequence(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _mapped(exc, self.target) from exc
        return {"user_id": r.user_id, "watermark": r.watermark, "total": r.total,
                "events": [{"item_id": e.item_id, "ts": e.ts, "context": e.context} for e in r.events]}


def _request(cls: Any, **fields: Any) -> Any:
    """A request message; a value protobuf cannot hold (an int64 overflow, a wrong type) is
    the caller's input error, not a crash."""
    try:
        return cls(**fields)
    except (ValueError, TypeError) as exc:
        raise InputError(f"invalid {cls.__name__}: {exc}") from exc


def _mapped(exc: grpc.RpcError, target: str = "") -> Exception:
    """The domain error for a failed call (the CLI prints it as one line)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InputError(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailable(f"retriever at {target} unavailable: {details} (is `longretriever "
                                  "serve` running there? check --target)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceUnavailable(f"retriever at {target}: no answer within the deadline "
                                  "(raise --timeout, or check the server's load)")
    return RemoteError(f"retriever at {target}: {code.name if code else 'ERROR'}: {details}")
