"""Compatibility shims needed before importing pymilvus / milvus-lite.

milvus-lite 2.5.1 does ``from pkg_resources import DistributionNotFound, get_distribution`` at
import time, only to read its own version. setuptools >= 81 no longer ships ``pkg_resources``
(84.2.1 is installed here), so ``MilvusClient("./milvus.db")`` fails with
``ModuleNotFoundError: pkg_resources``. When the real module is missing we register a minimal
stand-in backed by :mod:`importlib.metadata`. The proper fix is pinning ``setuptools<81`` (or a
milvus-lite release without the import); this shim is a no-op when the real module exists.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types


def ensure_pkg_resources() -> None:
    if "pkg_resources" in sys.modules:
        return
    try:
        if importlib.util.find_spec("pkg_resources") is not None:
            return
    except (ImportError, ValueError):
        pass
    mod = types.ModuleType("pkg_resources")

    class DistributionNotFound(Exception):
        pass

    class _Dist:
        def __init__(self, version: str) -> None:
            self.version = version

    def get_distribution(name: str) -> _Dist:
        try:
            return _Dist(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError as exc:
            raise DistributionNotFound(name) from exc

    mod.DistributionNotFound = DistributionNotFound  # type: ignore[attr-defined]
    mod.get_distribution = get_distribution  # type: ignore[attr-defined]
    mod.__longretriever_shim__ = True  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = mod


ensure_pkg_resources()
