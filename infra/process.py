"""Stopping a service started in its own process group (the Kafka broker, the Milvus server)."""

from __future__ import annotations

import os
import signal
import time


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
