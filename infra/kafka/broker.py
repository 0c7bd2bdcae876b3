"""A real single-node Apache Kafka broker (KRaft, combined broker + controller), no Docker.

The official broker jars are resolved from Maven Central with ``mvn dependency:copy-dependencies``
(pinned in ``pom.xml``) into a cache directory, then run with the machine's Java 17.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from longretriever.core.errors import ConfigError, ServiceUnavailable
from longretriever.infra.process import free_port, stop_group

KAFKA_VERSION = "3.9.1"
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LONGRETRIEVER_CACHE", Path.home() / ".cache" / "longretriever"))
LIB_DIR = CACHE / f"kafka-{KAFKA_VERSION}" / "lib"
STATE_FILE = "broker.json"


def fetch_jars(quiet: bool = True) -> Path:
    """Download the pinned broker jars (idempotent). Returns the lib directory."""
    marker = LIB_DIR / ".complete"
    if marker.exists():
        return LIB_DIR
    if shutil.which("mvn") is None:
        raise ConfigError("Maven (mvn) is needed to fetch the Kafka jars")
    tmp = LIB_DIR.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime", f"-Dkafka.version={KAFKA_VERSION}"]
    if quiet:
        cmd.insert(1, "-q")
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(f"mvn could not fetch the Kafka {KAFKA_VERSION} jars (exit "
                                 f"{exc.returncode}; is Maven Central reachable?)") from exc
    shutil.rmtree(LIB_DIR, ignore_errors=True)
    tmp.rename(LIB_DIR)
    marker.touch()
    return LIB_DIR


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    controller_port: int
    data_dir: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _properties(port: int, controller_port: int, log_dir: Path) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={log_dir}",
        "num.partitions=4",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # compacted changelogs (stream.changelog): look for dirty segments every second
        "log.cleaner.backoff.ms=1000",
        "auto.create.topics.enable=false",
        # the source topic is the system of record for state recovery: keep it
        "log.retention.ms=-1",
        "message.max.bytes=4194304",
        "",
    ])


def _java_cmd(lib: Path, data_dir: Path, main: str, *args: str) -> list[str]:
    return ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{HERE / 'log4j.properties'}",
            f"-Dkafka.logs.dir={data_dir / 'logs'}", "-cp", f"{lib}/*", main, *args]


def read_info(data_dir: Path) -> BrokerInfo | None:
    f = Path(data_dir) / STATE_FILE
    if not f.exists():
        return None
    return BrokerInfo(**json.loads(f.read_text()))


def is_alive(info: BrokerInfo) -> bool:
    try:
        os.kill(info.pid, 0)
    except OSError:
        return False
    try:
        with socket.create_connection(("127.0.0.1", info.port), timeout=1):
            return True
    except OSError:
        return False


def check_port_free(port: int) -> None:
    """ConfigError naming the fix if ``127.0.0.1:port`` cannot be bound (checked before the
    broker starts: Kafka itself only says so deep in its log)."""
    with socket.socket() as s:
        # like the broker's own listener: connections of a stopped broker in TIME_WAIT do not
        # block a restart on the same port, a listening socket does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(f"port {port} on 127.0.0.1 is not free ({exc.strerror or exc}): "
                              "choose another --port, or --port 0 for a free one") from exc


def start(data_dir: Path, port: int | None = None, timeout: float = 60.0) -> BrokerInfo:
    """Format (first time only) and start a broker; returns once it accepts connections.
    Nothing is created when the port is taken or Java is missing."""
    data_dir = Path(data_dir).resolve()
    existing = read_info(data_dir)
    if existing and is_alive(existing):
        return existing
    port = port or (existing.port if existing else free_port())
    check_port_free(port)
    if shutil.which("java") is None:
        raise ConfigError("java not found on PATH: the Kafka broker needs Java 17 or newer")
    lib = fetch_jars()
    data_dir.mkdir(parents=True, exist_ok=True)
    controller_port = free_port()
    log_dir = data_dir / "kraft-logs"
    props = data_dir / "server.properties"
    props.write_text(_properties(port, controller_port, log_dir))
    if not (log_dir / "meta.properties").exists():
        subprocess.run(_java_cmd(lib, data_dir, "kafka.tools.StorageTool", "format", "-t",
                                 uuid.uuid4().hex[:22], "-c", str(props)),
                       check=True, stdout=subprocess.DEVNULL)
    log = (data_dir / "broker.log").open("ab")
    proc = subprocess.Popen(_java_cmd(lib, data_dir, "kafka.Kafka", str(props)),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = BrokerInfo(proc.pid, port, controller_port, str(data_dir))
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(info)))
    _wait_ready(info, proc, timeout)
    return info


def _wait_ready(info: BrokerInfo, proc: subprocess.Popen, timeout: float) -> None:
    import logging

    quiet = logging.getLogger("kafka")  # "connection refused" is expected while it boots
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        _poll_ready(info, proc, timeout)
    finally:
        quiet.setLevel(level)


def _poll_ready(info: BrokerInfo, proc: subprocess.Popen, timeout: float) -> None:
    from kafka import KafkaAdminClient  # local import: heavy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = Path(info.data_dir) / "broker.log"
            raise ServiceUnavailable(f"Kafka broker exited with {proc.returncode}: "
                                     f"{_last_error(log) or 'no error line logged'} (see {log})")
        try:
            admin = KafkaAdminClient(bootstrap_servers=info.bootstrap, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            time.sleep(0.3)
    raise ServiceUnavailable(f"Kafka broker not ready after {timeout:.0f}s")


def _last_error(log: Path, tail_bytes: int = 64 * 1024) -> str | None:
    """The most telling line at the end of the broker log: a bind failure, else the last
    ERROR / FATAL line (shortened)."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - tail_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "Address already in use" in line:
            return "address already in use (another broker on that port?)"
    for line in reversed(lines):
        if " ERROR " in line or " FATAL " in line or "Exception" in line:
            return line.strip()[:300]
    return None


def stop(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker of ``data_dir`` (SIGTERM, then SIGKILL). Returns False if none ran."""
    info = read_info(Path(data_dir))
    if info is None:
        return False
    stopped = stop_group(info.pid, timeout)
    (Path(data_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped


if __name__ == "__main__":  # pragma: no cover - convenience for shell scripts
    print(fetch_jars(), file=sys.stderr)
