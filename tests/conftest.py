"""Shared fixtures. Integration tests get a real Apache Kafka broker (KRaft), started once per
session on a free port and stopped afterwards; set LONGRETRIEVER_TEST_BOOTSTRAP to use one
that is already running instead."""

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


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test so tests never see each other's events."""
    return f"user-events-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def movielens_path() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        pytest.skip(f"MovieLens not found at {MOVIELENS}")
    return MOVIELENS
