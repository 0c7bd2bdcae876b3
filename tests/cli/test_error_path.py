"""The one error path's pieces, in-process: what each kind of exception prints and exits
with, and the filter that keeps client libraries' retried transients out of the log."""

from __future__ import annotations

import errno
import logging

import pytest
from pydantic import ValidationError

from longretriever.cli.app import EXIT_BUG, EXIT_INPUT, describe, one_line
from longretriever.cli.logs import DependencyFilter
from longretriever.core.errors import BundleError, ServiceUnavailable
from longretriever.core.settings import Settings


def _validation_error(**kw) -> ValidationError:
    with pytest.raises(ValidationError) as ei:
        Settings(**kw)
    return ei.value


@pytest.mark.parametrize("exc,code,needle", [
    (BundleError("bundle x: manifest missing"), EXIT_INPUT, "manifest missing"),
    (ServiceUnavailable("Kafka not reachable"), EXIT_INPUT, "Kafka not reachable"),
    (_validation_error(max_sequence_len=0), EXIT_INPUT, "LONGRETRIEVER_MAX_SEQUENCE_LEN"),
    (_validation_error(no_such_key=1), EXIT_INPUT, "unknown setting 'no_such_key'"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), EXIT_INPUT, "cannot connect"),
    (OSError(errno.EADDRINUSE, "Address already in use"), EXIT_INPUT, "choose another port"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y.pem"), EXIT_INPUT, "/x/y.pem"),
    (ZeroDivisionError("division by zero"), EXIT_BUG, "--debug"),
])
def test_describe(exc, code, needle):
    message, got = describe(exc)
    assert got == code and needle in message, message


def test_describe_grpc_and_kafka_errors():
    import grpc
    from kafka.errors import NoBrokersAvailable

    class Rpc(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.INTERNAL

        def details(self):
            return "boom"

    assert describe(Rpc()) == ("gRPC INTERNAL: boom", EXIT_INPUT)
    message, code = describe(NoBrokersAvailable())
    assert code == EXIT_INPUT and message.startswith("Kafka error: NoBrokersAvailable")


def test_one_line():
    assert one_line("a\n  b\n\nc") == "a; b; c"
    assert len(one_line("x" * 5000)) == 600


def _record(name: str, msg: str = "Group Coordinator Request failed: %s", level=logging.ERROR):
    return logging.LogRecord(name, level, __file__, 1, msg, ("GroupCoordinatorNotAvailableError",), None)


def test_dependency_filter_holds_back_transients_and_logs_a_persisting_failure_once():
    now = [0.0]
    f = DependencyFilter(grace=30, rearm=600, clock=lambda: now[0])
    name = "aiokafka.consumer.group_coordinator"
    assert not f.filter(_record(name))  # a fresh broker: retried, quiet
    now[0] = 5
    assert not f.filter(_record(name))
    assert f.filter(_record("longretriever.stream.worker", "worker stopped"))  # ours: always shown
    assert f.filter(_record("kafka.conn", level=logging.CRITICAL))
    assert f.filter(_record("kafka.conn", level=logging.INFO))  # below WARNING: the level decides
    now[0] = 31
    r = _record(name)
    assert f.filter(r) and "repeating for 31 s" in r.getMessage()  # persisting: logged once
    now[0] = 40
    assert not f.filter(_record(name))  # ... and not again
    now[0] = 40 + 601  # quiet for longer than rearm: a new episode starts quiet again
    assert not f.filter(_record(name))
    now[0] += 31
    assert f.filter(_record(name))
