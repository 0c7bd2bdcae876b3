"""Logging of the console script: our own WARNING/ERROR lines as they are, the client
libraries' (Kafka, Milvus, gRPC) through :class:`DependencyFilter`.

kafka-python and aiokafka log every failed attempt of something they retry themselves: a
group coordinator that a fresh broker has not elected yet (``GroupCoordinatorNotAvailable``),
a connection refused while we probe a broker. Those lines are noise on a successful run, and
on a failed one our own error line already says what happened and how to fix it. The filter
therefore holds a dependency's warning back until the same kind of record (logger + message
template) has kept coming for ``grace`` seconds -- then it is a real failure and is logged
once, with a note; repeats stay quiet until that kind of record has been absent for
``rearm`` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time

DEPENDENCIES = ("kafka", "aiokafka", "pymilvus", "milvus_lite", "grpc")
GRACE_S = 30.0
REARM_S = 600.0


class DependencyFilter(logging.Filter):
    def __init__(self, grace: float = GRACE_S, rearm: float = REARM_S, clock=time.monotonic) -> None:
        super().__init__()
        self.grace, self.rearm, self.clock = grace, rearm, clock
        self._first: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._reported: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @staticmethod
    def is_dependency(name: str) -> bool:
        return name.split(".", 1)[0] in DEPENDENCIES

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.CRITICAL:
            return True
        if not self.is_dependency(record.name):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            if now - self._last.get(key, now) > self.rearm:  # quiet for long: a new episode
                self._first.pop(key, None)
                self._reported.discard(key)
            self._last[key] = now
            first = self._first.setdefault(key, now)
            if now - first < self.grace or key in self._reported:
                return False
            self._reported.add(key)
        record.msg = f"{record.msg} [repeating for {now - first:.0f} s; further repeats not logged]"
        return True


LEVEL_ENV = "LONGRETRIEVER_LOG_LEVEL"


def configure(debug: bool = False) -> None:
    """Root logging for a CLI process: ``LONGRETRIEVER_LOG_LEVEL`` (default WARNING); the
    dependency filter unless debugging (``--debug``, ``LONGRETRIEVER_DEBUG=1`` or level DEBUG)."""
    from longretriever.core.errors import ConfigError

    level = os.environ.get(LEVEL_ENV, "WARNING").strip().upper() or "WARNING"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{LEVEL_ENV}={level.lower()}: not a log level (DEBUG, INFO, WARNING, "
                          "ERROR or CRITICAL)")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if debug or level == "DEBUG":
        show_all()
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, DependencyFilter) for f in handler.filters):
            handler.addFilter(DependencyFilter())


def show_all() -> None:
    """Drop the dependency filter (``--debug``): every record reaches the log."""
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, DependencyFilter)]:
            handler.removeFilter(f)
