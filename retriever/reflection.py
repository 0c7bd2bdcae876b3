"""gRPC server reflection, both protocol versions: ``grpc.reflection.v1`` (what current grpcurl,
Postman and grpc_cli ask first) and ``grpc.reflection.v1alpha`` (older clients).

grpcio-reflection implements v1alpha only. v1 is the same protocol under a new package name:
the messages have identical fields and numbers, so the v1alpha servicer answers v1 calls
unchanged; only the method path and the descriptor differ. The v1 descriptor is the v1alpha
one renamed (added to the descriptor pool once), so reflection can also describe itself.
"""

from __future__ import annotations

from typing import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection as alpha_reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE = alpha_reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
        return  # already there (added earlier, or by a library that ships v1)
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(fdp)
    old = f".{alpha.DESCRIPTOR.package}."
    fdp.name, fdp.package = V1_FILE, V1_PACKAGE
    for msg in fdp.message_type:
        for f in msg.field:
            if f.type_name.startswith(old):
                f.type_name = f".{V1_PACKAGE}." + f.type_name[len(old):]
    for svc in fdp.service:
        for m in svc.method:
            m.input_type = f".{V1_PACKAGE}." + m.input_type[len(old):]
            m.output_type = f".{V1_PACKAGE}." + m.output_type[len(old):]
    pool.AddSerializedFile(fdp.SerializeToString())


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha for ``service_names`` (both reflection services are
    listed as well) on an asyncio server."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = tuple(service_names) + (V1_SERVICE, V1ALPHA_SERVICE)
    alpha_reflection.enable_server_reflection(names, server)
    servicer = alpha_reflection.aio.ReflectionServicer(names)
    v1 = grpc.method_handlers_generic_handler(V1_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=alpha.ServerReflectionRequest.FromString,
            response_serializer=alpha.ServerReflectionResponse.SerializeToString)})
    server.add_generic_rpc_handlers((v1,))
