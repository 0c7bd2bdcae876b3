"""Small synchronous gRPC client for the retriever endpoint."""

from __future__ import annotations

from typing import Any

import grpc

from longretriever.core.errors import InputError, ServiceUnavailable
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

    def retrieve_pb(self, user_id: int, k: int, max_contexts: int = 8, exclude_seen: bool = True,
                    timeout: float | None = None) -> pb.RetrieveResponse:
        req = pb.RetrieveRequest(user_id=user_id, k=k, max_contexts=max_contexts, exclude_seen=exclude_seen)
        return self.stub.Retrieve(req, timeout=timeout or self.timeout)

    def retrieve(self, user_id: int, k: int, max_contexts: int = 8, exclude_seen: bool = True,
                 timeout: float | None = None) -> dict[str, Any]:
        """The response as the JSON shape printed by ``longretriever query --json``."""
        try:
            r = self.retrieve_pb(user_id, k, max_contexts, exclude_seen, timeout)
        except grpc.RpcError as exc:
            raise _mapped(exc) from exc
        return {"user_id": user_id, "model_version": r.model_version, "watermark": r.watermark,
                "fallback": r.fallback,
                "candidates": [{"item_id": c.item_id, "score": c.score, "context": c.context}
                               for c in r.candidates]}

    def user_sequence(self, user_id: int, context: str | None = None,
                      timeout: float | None = None) -> dict[str, Any]:
        req = pb.GetUserSequenceRequest(user_id=user_id)
        if context is not None:
            req.context = context
        try:
            r = self.stub.GetUserSequence(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _mapped(exc) from exc
        return {"user_id": r.user_id, "watermark": r.watermark,
                "events": [{"item_id": e.item_id, "ts": e.ts, "context": e.context} for e in r.events]}


def _mapped(exc: grpc.RpcError) -> Exception:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InputError(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServiceUnavailable(f"{code.name}: {details}")
    return RuntimeError(f"{code.name if code else 'ERROR'}: {details}")
