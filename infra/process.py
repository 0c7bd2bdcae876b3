"""Services started in their own process group (the Kafka broker, the Milvus server): a free
port to give them, and stopping them."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

_LOWEST = 10_000  # below: well-known and registered service ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def free_port() -> int:
    """A loopback TCP port free now and outside the kernel's ephemeral range. ``bind(0)`` hands
    out ephemeral ports, which any outgoing connection (a client's local port) may take before
    the service binds them: a Milvus server start, with ten such ports, lost one that way in a
    CI run. Falls back to ``bind(0)`` when no port below the range is free."""
    lo, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(100) if lo > _LOWEST else ():
        port = rng.randrange(_LOWEST, lo)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(pid: int, timeout: float) -> bool:
    """SIGTERM the process group led by ``pid``, wait up to ``timeout`` seconds for the leader
    to exit (reaping it when it is our child), then SIGKILL the group. False when no such
    process was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True  # our own child: exited and reaped
        except ChildProcessError:
            pass  # started by another process: only its disappearance tells
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (OSError, ChildProcessError):
        pass
    return True
