"""Shared fixtures. Integration tests get a real Apache Kafka broker (KRaft) and a real Milvus
standalone server, each started once per session on free ports and stopped afterwards; set
LONGRETRIEVER_TEST_BOOTSTRAP / LONGRETRIEVER_TEST_MILVUS to use ones already running instead.
Without the `milvus` package (or if the server cannot start) the server-tier tests fail in CI
(CI=true) and are skipped, with the reason, elsewhere."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.serving"]  # reliability_bundle / reliability_server

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = Path(os.environ.get("LONGRETRIEVER_MOVIELENS", ROOT.parent / "shared" / "data" / "ml-latest-small"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    given = os.environ.get("LONGRETRIEVER_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    from longretriever.infra.kafka import broker

    data = tmp_path_factory.mktemp("kafka")
    info = broker.start(data, None)
    try:
        yield info.bootstrap
    finally:
        broker.stop(data)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> str:
    """URI of a real Milvus server (``http://127.0.0.1:PORT``) for the whole session."""
    given = os.environ.get("LONGRETRIEVER_TEST_MILVUS")
    if given:
        yield given
        return
    from longretriever.infra.milvus import server

    data = tmp_path_factory.mktemp("milvus-server")
    try:
        info = server.start(data)
    except Exception as exc:  # noqa: BLE001 - no package, no port, no start: say why
        reason = f"no Milvus server for the server-tier tests: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield info.uri
    finally:
        server.stop(data)


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test so tests never see each other's events."""
    return f"user-events-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def movielens_path() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        pytest.skip(f"MovieLens not found at {MOVIELENS}")
    return MOVIELENS
