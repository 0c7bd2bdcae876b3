"""A real Milvus standalone server (embedded etcd, local storage, rocksmq), no Docker.

The ``milvus`` PyPI package ("embedded Milvus", pinned in the ``[milvus]`` extra) ships the
standalone server binary and its libraries, LZMA-compressed. They are unpacked once into a
cache directory (like the Kafka jars), and each server gets a data directory with its own
config, logs and storage. Every port the server listens on is chosen free here and written into
its config, so several servers (tests, benches, other engineers) can run side by side.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longretriever.core.errors import ConfigError, ServiceUnavailable
from longretriever.infra.process import free_port, stop_group

MILVUS_VERSION = "2.3.5"  # the `milvus` package version this manager was written and measured against
CACHE = Path(os.environ.get("LONGRETRIEVER_CACHE", Path.home() / ".cache" / "longretriever"))
BIN_DIR = CACHE / f"milvus-{MILVUS_VERSION}"
STATE_FILE = "milvus.json"
INSTALL_HINT = "pip install 'longretriever[milvus]'  (the `milvus` package ships the server)"

# Server settings different from the package's template (dotted keys of milvus.yaml). Chosen
# for a small shared box: the idle server otherwise spends most of a core on 16 DML channels'
# time ticks; logs at warn keep the data directory small.
TUNING: dict[str, Any] = {
    "rootCoord.dmlChannelNum": 2,
    "log.level": "warn",
    "proxy.http.enabled": False,
    "queryNode.stats.publishInterval": 3000,
    "common.gracefulStopTimeout": 5,  # seconds; default 1800 (stop would wait for SIGKILL)
    # after a crash the restarted node waits for the dead one's etcd session to expire before
    # it serves (measured: ~30 s to the first answer with the default ttl of 30 s)
    "common.session.ttl": 10,
}


def _milvus_package() -> Any:
    try:
        import milvus  # the `milvus` PyPI package (embedded server)
    except ImportError as exc:
        raise ConfigError(f"the Milvus server is not installed: {INSTALL_HINT}") from exc
    found = getattr(milvus, "__version__", "?")
    if found != MILVUS_VERSION:
        raise ConfigError(f"milvus package {found} installed, {MILVUS_VERSION} expected: {INSTALL_HINT}")
    return milvus


def binaries() -> Path:
    """Unpack the server binary and its libraries into the cache (idempotent); the bin dir."""
    milvus = _milvus_package()
    marker = BIN_DIR / "bin" / ".complete"
    if not marker.exists():
        BIN_DIR.mkdir(parents=True, exist_ok=True)
        milvus._initialize_data_files(str(BIN_DIR))  # checks md5 of each member, unpacks the changed
        marker.touch()
    return BIN_DIR / "bin"


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    metrics_port: int
    data_dir: str

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def read_info(data_dir: Path) -> ServerInfo | None:
    f = Path(data_dir) / STATE_FILE
    if not f.exists():
        return None
    return ServerInfo(**json.loads(f.read_text()))


def _healthy(metrics_port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=timeout) as r:
            return b"OK" in r.read()
    except OSError:
        return False


def is_alive(info: ServerInfo) -> bool:
    try:
        os.kill(info.pid, 0)
    except OSError:
        return False
    return _healthy(info.metrics_port)


_PORT_KEYS = ("etcd_port", "root_coord_port", "proxy_internal_port", "query_coord_port", "query_node_port",
              "index_coord_port", "index_node_port", "data_coord_port", "data_node_port")
# every component advertises (and is dialled by the others on) loopback, not the host's address
_LOOPBACK = {f"{role}.ip": "127.0.0.1" for role in
             ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")}


def _ports(data_dir: Path, port: int) -> dict[str, int]:
    """The server's ports: those of the last start on ``data_dir`` (the embedded etcd keeps its
    peer URL in its data), else free ones."""
    f = data_dir / "configs" / "ports.json"
    ports = json.loads(f.read_text()) if f.exists() else {}
    for k in (*_PORT_KEYS, "etcd_peer_port"):
        ports.setdefault(k, free_port())
    ports["proxy_port"] = port
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(ports))
    return ports


def _try_bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def _write_config(data_dir: Path, port: int, tuning: dict[str, Any]) -> dict[str, int]:
    """milvus.yaml (+ glog.conf, the embedded etcd's config) under ``data_dir/configs``."""
    milvus = _milvus_package()
    ports = _ports(data_dir, port)
    cfg = milvus.MilvusServerConfig(data_dir=str(data_dir), **{k: ports[k] for k in (*_PORT_KEYS, "proxy_port")})
    cfg.try_bind_port = _try_bind  # the package's check binds without SO_REUSEADDR: after a
    # restart, TIME_WAIT connections on a port would make it refuse a port Milvus itself can use
    for key, value in {**_LOOPBACK, **tuning}.items():
        cfg.set(key, value)
    cfg.resolve()  # storage dirs, ports checked bindable, configs/milvus.yaml written
    # The embedded etcd listens on 2379/2380 unless given a config file (the package's template
    # has no key for it): one per server, on its own ports, so servers can run side by side.
    etcd_yaml = data_dir / "configs" / "embed-etcd.yaml"
    client, peer = f"http://127.0.0.1:{ports['etcd_port']}", f"http://127.0.0.1:{ports['etcd_peer_port']}"
    etcd_yaml.write_text("\n".join([
        "name: longretriever", f"data-dir: {data_dir / 'data' / 'etcd.data'}",
        f"listen-client-urls: {client}", f"advertise-client-urls: {client}",
        f"listen-peer-urls: {peer}", f"initial-advertise-peer-urls: {peer}",
        f"initial-cluster: longretriever={peer}", "initial-cluster-state: new", ""]))
    yaml = data_dir / "configs" / "milvus.yaml"
    text = yaml.read_text()
    yaml.write_text(text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1))
    return ports


def start(data_dir: Path, port: int | None = None, timeout: float = 180.0,
          tuning: dict[str, Any] | None = None) -> ServerInfo:
    """Start a server on ``data_dir`` (kept across restarts) in the background; returns once it
    answers. A server already running on ``data_dir`` is returned as it is."""
    data_dir = Path(data_dir).resolve()
    existing = read_info(data_dir)
    if existing and is_alive(existing):
        return existing
    bin_dir = binaries()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or (existing.port if existing else free_port())
    _write_config(data_dir, port, {**TUNING, **(tuning or {})})
    metrics_port = free_port()
    env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics_port),
           "MILVUSCONF": str(data_dir / "configs"), "MILVUS_RUN_DIR": str(data_dir / "run"),
           "LD_LIBRARY_PATH": ":".join(filter(None, [str(bin_dir), os.environ.get("LD_LIBRARY_PATH")]))}
    log = (data_dir / "logs" / "milvus-stdout.log").open("ab")
    proc = subprocess.Popen([str(bin_dir / "milvus"), "run", "standalone"], cwd=data_dir, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    info = ServerInfo(proc.pid, port, metrics_port, str(data_dir))
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(info)))
    try:
        _wait_ready(info, proc, timeout)
    except BaseException:
        stop(data_dir)
        raise
    return info


def _wait_ready(info: ServerInfo, proc: subprocess.Popen, timeout: float) -> None:
    """/healthz OK, then a real client call (the proxy may lag the health endpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"Milvus server exited with {proc.returncode}; see "
                                     f"{info.data_dir}/logs/milvus-stdout.log")
        if _healthy(info.metrics_port):
            try:
                from pymilvus import MilvusClient

                c = MilvusClient(info.uri, timeout=5)
                c.list_collections()
                c.close()
                return
            except Exception:  # noqa: BLE001 - not ready yet
                pass
        time.sleep(0.3)
    raise ServiceUnavailable(f"Milvus server not ready after {timeout:.0f}s; see "
                             f"{info.data_dir}/logs/milvus-stdout.log")


def stop(data_dir: Path, timeout: float = 15.0) -> bool:
    """Stop the server of ``data_dir`` (SIGTERM to its process group, then SIGKILL). Returns
    False if none ran. The data stays: ``start`` on the same directory brings it back."""
    data_dir = Path(data_dir)
    info = read_info(data_dir)
    if info is None:
        return False
    stopped = stop_group(info.pid, timeout)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def kill(data_dir: Path) -> bool:
    """SIGKILL the server of ``data_dir`` (an outage, for tests); the state file stays, so
    ``start`` restarts it on the same port."""
    info = read_info(Path(data_dir))
    if info is None:
        return False
    try:
        os.killpg(info.pid, signal.SIGKILL)
    except OSError:
        return False
    try:
        os.waitpid(info.pid, 0)
    except ChildProcessError:
        pass
    return True


def rss_bytes(info: ServerInfo) -> int | None:
    """Resident memory of the server process (None when unknown)."""
    try:
        with open(f"/proc/{info.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
