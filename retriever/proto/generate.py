"""Regenerate the checked-in gRPC code: ``python -m longretriever.retriever.proto.generate``.

Runs grpc_tools.protoc on ``longretriever.proto`` and rewrites the generated absolute import
(``import longretriever_pb2``) to a package-relative one, so the modules import as
``longretriever.retriever.proto.longretriever_pb2*`` without touching sys.path.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "longretriever.proto"


def generate() -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"-I{include}", f"--python_out={HERE}",
                      f"--pyi_out={HERE}", f"--grpc_python_out={HERE}", str(HERE / PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    grpc_file = HERE / "longretriever_pb2_grpc.py"
    text = grpc_file.read_text()
    text = re.sub(r"^import longretriever_pb2 as", "from . import longretriever_pb2 as", text, flags=re.M)
    grpc_file.write_text(text)
    return [HERE / "longretriever_pb2.py", HERE / "longretriever_pb2.pyi", grpc_file]


if __name__ == "__main__":
    for p in generate():
        print(p, file=sys.stderr)
