"""Ports handed to the services we start (infra.process.free_port)."""

from __future__ import annotations

import socket

from longretriever.infra import process
from longretriever.infra.kafka import broker
from longretriever.infra.milvus import server


def test_free_ports_are_bindable_and_outside_the_ephemeral_range():
    lo, hi = process._ephemeral_range()
    assert 1024 < lo <= hi
    for _ in range(20):
        port = process.free_port()
        # an outgoing connection takes its local port from [lo, hi]: a port there could be
        # taken between choosing it and the service binding it
        assert not lo <= port <= hi and port >= 10_000
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert broker.free_port is process.free_port is server.free_port  # one rule for both services


def test_free_port_falls_back_to_the_kernel_when_nothing_below_the_range(monkeypatch):
    monkeypatch.setattr(process, "_ephemeral_range", lambda: (process._LOWEST, 60_999))
    port = process.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
