"""The embedded Kafka-protocol broker: noida-db's binary (PyPI noida-db), started as a child process.

Everything else in streaming/ talks plain Kafka protocol to `bootstrap_servers`, so any real Kafka cluster works
instead (`--bootstrap-servers`); only this module knows the embedded broker exists.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from streaming.retention import KEEP_RECORDS, RetentionKeeper
from training.processes import dies_with_parent

TOPICS = {"sensors": "turbofan.sensors", "alerts": "turbofan.alerts", "dlq": "turbofan.dlq"}
PARTITIONS = 4  # per topic; sensors are keyed by engine, so partitions spread engines across monitors


class BrokerError(RuntimeError):
    pass


def broker_binary() -> Path:
    import noida_db

    path = Path(noida_db.__file__).parent / "noida-db"
    if not path.is_file():
        raise BrokerError(f"{path}: the noida-db binary is missing from its package; reinstall noida-db")
    return path


class EmbeddedBroker:
    """`noida-db start --only kafka` in its own process group; persists its data under `data_dir`, at most
    `keep_records` per partition (streaming.retention; None: every record)."""

    def __init__(self, data_dir: Path, port: int = 9092, host: str = "127.0.0.1",
                 keep_records: int | None = KEEP_RECORDS) -> None:
        self.data_dir, self.port, self.host, self.keep_records = Path(data_dir), port, host, keep_records
        self.process: subprocess.Popen | None = None
        self.retention: RetentionKeeper | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _check_port_free(self.host, self.port)
        log = open(self.data_dir / "broker.log", "ab")  # noqa: SIM115 - the child owns it
        command = [str(broker_binary()), "start", "--data-dir", str(self.data_dir), "--host", self.host, "--only",
                   "kafka", "--kafka-port", str(self.port)]
        # It ends with this process even when that one is killed outright: an orphan would hold the port.
        self.process = subprocess.Popen(dies_with_parent(command), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for_broker(self.bootstrap_servers, timeout, self.process, self.data_dir / "broker.log")
        if self.keep_records is not None and self.retention is None:
            self.retention = RetentionKeeper(self.bootstrap_servers, self.keep_records).start()
        return self.bootstrap_servers

    def stop(self, timeout: float = 15.0) -> None:
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the broker saves its data on the way out
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """Crash it (SIGKILL): what a broker restart test needs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port_free(host: str, port: int, wait_s: float = 10.0) -> None:
    """Another process on the port would answer our readiness checks in the broker's place."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerError(f"port {host}:{port} is already in use; pick another with --port") from None
        time.sleep(0.2)


def wait_for_broker(bootstrap_servers: str, timeout: float = 30.0, process: subprocess.Popen | None = None,
                    log: Path | None = None) -> None:
    """Until the broker answers a metadata request (an open port alone is not enough)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = bootstrap_servers.split(",")[0].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.is_file() else []
            raise BrokerError(f"the broker exited with code {process.returncode}" + (f": {tail[0]}" if tail else ""))
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (OSError, KafkaError):
            time.sleep(0.2)
    raise BrokerError(f"no Kafka broker answered at {bootstrap_servers} within {timeout:.0f} s")


def ensure_topics(bootstrap_servers: str, partitions: int = PARTITIONS) -> None:
    """Create the turbofan topics where missing (sensors keyed by engine: partitions spread engines)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, num_partitions=partitions, replication_factor=1)
                   for name in TOPICS.values() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another process created it first
                pass
    finally:
        admin.close()
