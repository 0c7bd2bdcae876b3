"""grpc.aio endpoint: Retrieve + GetUserSequence, health checking, reflection (v1 and v1alpha),
error mapping. Seen items are excluded unless a request sets include_seen; GetUserSequence
returns the newest `limit` events (default 1000); see longretriever.proto for compatibility.

Errors never leak tracebacks: :class:`ErrorInterceptor` maps ``InputError`` ->
INVALID_ARGUMENT, ``RetriableError`` -> UNAVAILABLE, a blown deadline -> DEADLINE_EXCEEDED and
anything else -> INTERNAL with a short message and a reference id that is logged with the
traceback server-side. The blocking backend runs in worker threads, bounded by the client's
deadline. SIGTERM / SIGINT flip health to NOT_SERVING and stop the server gracefully.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import uuid
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from longretriever.core.errors import InputError, RetriableError, ServiceUnavailable
from longretriever.core import planner as q
from longretriever.retriever.metrics import RPCS
from longretriever.retriever.proto import longretriever_pb2 as pb
from longretriever.retriever.proto import longretriever_pb2_grpc as pb_grpc
from longretriever.retriever.reflection import enable_reflection

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Retriever"].full_name  # longretriever.v1.Retriever
DEFAULT_MAX_CONTEXTS = 8
FORWARDED_HEADER = "lr-forwarded"
BACKEND_MARGIN_S = 0.5  # deadline share kept back from the backend (at most 20 % of it)
MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024  # requests are a few scalars; refuse anything larger
MAX_SEND_MESSAGE_BYTES = 64 * 1024 * 1024  # a k=10000 answer or a 100k-event sequence
DEFAULT_SEQUENCE_LIMIT = 1000  # GetUserSequence: newest events returned when limit is 0
MAX_SEQUENCE_LIMIT = 100_000


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for an exception raised by a handler."""
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:500]
    if isinstance(exc, RetriableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)[:500]
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"


_MALFORMED = object()  # what the request deserializer yields for bytes that do not parse


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler so exceptions become clean status codes."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if (handler is None or handler.unary_unary is None
                or not handler_call_details.method.startswith(f"/{SERVICE_NAME}/")):
            return handler  # health / reflection / streaming: leave untouched
        inner = handler.unary_unary
        method = handler_call_details.method
        deserialize = handler.request_deserializer

        short = method.rsplit("/", 1)[-1]

        def safe_deserialize(raw: bytes) -> Any:
            # grpc turns a deserializer exception into UNKNOWN with the exception text
            try:
                return deserialize(raw) if deserialize is not None else raw
            except Exception:  # noqa: BLE001 - protobuf DecodeError and friends
                return _MALFORMED

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if request is _MALFORMED:
                    raise InputError(f"malformed {short} request: not a valid protobuf message")
                res = inner(request, context)
                out = (await res) if inspect.isawaitable(res) else res
                RPCS.labels(short, "OK").inc()
                return out
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                code, msg = status_for(exc)
                RPCS.labels(short, code.name).inc()
                if code == grpc.StatusCode.INTERNAL:
                    ref = uuid.uuid4().hex[:12]
                    log.exception("%s failed (ref %s)", method, ref)
                    msg = f"{msg}; ref {ref}"
                else:
                    log.info("%s -> %s: %s", method, code.name, msg)
                await context.abort(code, msg)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=safe_deserialize,
            response_serializer=handler.response_serializer)


class RetrieverServicer(pb_grpc.RetrieverServicer):
    """Adapts a backend (``longretriever.retriever.service.RetrieverService`` or a fake with the same
    ``retrieve`` / ``user_sequence`` / ``context_name`` / ``context_id`` methods)."""

    def __init__(self, backend: Any, default_timeout: float | None = 10.0, router: Any = None) -> None:
        self.backend = backend
        self.default_timeout = default_timeout
        self.router = router  # retriever.routing.Router: forwards users owned by another process
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _forward(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Forward to the owner of ``request.user_id`` if that is another process; None if
        this process owns it. A forwarded call is never forwarded again (no loops)."""
        if self.router is None or dict(context.invocation_metadata() or ()).get(FORWARDED_HEADER):
            return None
        owner = self.router.remote_owner(request.user_id)
        if owner is None:
            return None
        ch = self._channels.get(owner)
        if ch is None:
            ch = self._channels[owner] = grpc.aio.insecure_channel(owner)
        stub = pb_grpc.RetrieverStub(ch)
        remaining = context.time_remaining()
        try:
            return await getattr(stub, method)(request, timeout=remaining or self.default_timeout,
                                               metadata=((FORWARDED_HEADER, "1"),))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED):
                await context.abort(exc.code(), exc.details() or "")
            raise ServiceUnavailable(f"owner {owner} of user {request.user_id} unreachable: "
                                     f"{exc.code().name}") from exc

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else self.default_timeout
        if timeout is not None and timeout <= 0:
            raise asyncio.TimeoutError()
        if "timeout" in kw:
            # the backend gets slightly less than the deadline, so a dependency failure it
            # detects at the end of its budget still reaches the client as UNAVAILABLE
            kw["timeout"] = None if timeout is None else timeout - min(BACKEND_MARGIN_S, 0.2 * timeout)
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), timeout)

    async def Retrieve(self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext) -> pb.RetrieveResponse:
        max_contexts = request.max_contexts or DEFAULT_MAX_CONTEXTS
        q.validate_request(request.user_id, request.k, max_contexts)
        if request.include_seen and request.exclude_seen:  # field 4 is deprecated (see the proto)
            raise InputError("include_seen and the deprecated exclude_seen contradict each other; "
                             "send include_seen only")
        forwarded = await self._forward("Retrieve", request, context)
        if forwarded is not None:
            return forwarded
        res = await self._run(context, self.backend.retrieve, request.user_id, request.k, max_contexts,
                              not request.include_seen, timeout=None)
        out = pb.RetrieveResponse(model_version=res.model_version, watermark=res.watermark,
                                  fallback=res.fallback)
        # repeated-field add: half the time of building Candidate messages and passing a list
        add = out.candidates.add
        names = {c: self.backend.context_name(c) for c in {c.context for c in res.candidates}}
        for c in res.candidates:
            add(item_id=c.item_id, score=c.score, context=names[c.context])
        return out

    async def GetUserSequence(self, request: pb.GetUserSequenceRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetUserSequenceResponse:
        if request.user_id < 0:
            raise InputError(f"user_id must be >= 0, got {request.user_id}")
        if not 0 <= request.limit <= MAX_SEQUENCE_LIMIT:
            raise InputError(f"limit must be in [0, {MAX_SEQUENCE_LIMIT}] (0: the newest "
                             f"{DEFAULT_SEQUENCE_LIMIT}), got {request.limit}")
        ctx = self.backend.context_id(request.context) if request.HasField("context") else None
        forwarded = await self._forward("GetUserSequence", request, context)
        if forwarded is not None:
            return forwarded
        res = await self._run(context, self.backend.user_sequence, request.user_id, ctx,
                              request.limit or DEFAULT_SEQUENCE_LIMIT)
        name = self.backend.context_name
        events = [pb.Event(item_id=i, ts=t, context=name(c))
                  for i, t, c in zip(res.items.tolist(), res.ts.tolist(), res.contexts.tolist())]
        total = len(events) if res.total is None else res.total
        return pb.GetUserSequenceResponse(user_id=request.user_id, events=events, watermark=res.watermark,
                                          total=total)


def build_server(backend: Any, host: str = "127.0.0.1", port: int = 0,
                 default_timeout: float | None = 10.0, router: Any = None,
                 tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.aio.Server, int, health.HealthServicer]:
    """A configured (not started) server; returns (server, bound port, health servicer).
    Must be called with a running event loop."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()],
                             options=[("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
                                      ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_RetrieverServicer_to_server(RetrieverServicer(backend, default_timeout, router), server)
    hs = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    enable_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    if tls is not None:  # (certificate chain PEM, private key PEM)
        creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
        bound = server.add_secure_port(f"{host}:{port}", creds)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return server, bound, hs


def set_serving(hs: health.HealthServicer, serving: bool) -> None:
    st = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        hs.set(name, st)


async def serve(backend: Any, host: str = "127.0.0.1", port: int = 50051, grace: float = 5.0,
                stop: asyncio.Event | None = None,
                on_started: Callable[[int], None] | None = None, router: Any = None,
                tls: tuple[bytes, bytes] | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then drain in-flight calls for ``grace`` s."""
    server, bound, hs = build_server(backend, host, port, router=router, tls=tls)
    await server.start()
    set_serving(hs, True)
    log.info("retriever listening on %s:%d", host, bound)
    if on_started:
        on_started(bound)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        await stop.wait()
    finally:
        set_serving(hs, False)
        await server.stop(grace)
        for sig in installed:
            loop.remove_signal_handler(sig)
