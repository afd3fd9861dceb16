"""The demo's live part for a turbofan checkpoint (the turbofan spec's `live`): the embedded Kafka broker, a looping
replay of the test engines its training used, and the stream monitor scoring them with the checkpoint and raising
alerts, with its metrics endpoint. `modelyard demo` starts one for a demo run marked live and stops it on Ctrl-C."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from streaming.broker import EmbeddedBroker, ensure_topics
from streaming.monitor import MonitorSettings, TurbofanMonitor, serve_metrics
from streaming.replay import load_replay, replay
from training.checkpoint import read_manifest


class LiveMonitor:
    """Listens on ports["kafka"] and ports["metrics"] (the demo's --kafka-port and --metrics-port)."""

    def __init__(self, ckpt: Path, folder: Path, ports: dict[str, int], rate: float, stop: threading.Event) -> None:
        self.ckpt, self.folder, self.ports, self.rate, self.stop = Path(ckpt), Path(folder), ports, rate, stop
        self.broker: EmbeddedBroker | None = None
        self.monitor: TurbofanMonitor | None = None
        self.threads: list[threading.Thread] = []
        self.training = read_manifest(self.ckpt).training  # the subset and data folder the replay plays

    def start(self) -> dict[str, Any]:
        """Start everything; returns what the app's tabs read (bootstrap_servers, monitor_metrics)."""
        shutil.rmtree(self.folder, ignore_errors=True)  # a fresh stream: engines start at cycle 1
        self.broker = EmbeddedBroker(self.folder, self.ports["kafka"])
        bootstrap = self.broker.start()
        ensure_topics(bootstrap)
        fleet = load_replay(Path(self.training["data_dir"]), self.training["subset"], "test")
        self.threads.append(threading.Thread(target=replay, args=(bootstrap, fleet, self.rate, True),
                                             kwargs={"stop": self.stop, "progress": False}, daemon=True))
        self.monitor = TurbofanMonitor(MonitorSettings(bootstrap, self.ckpt, group="demo-monitor",
                                                       instance_id="demo-monitor-1"))
        serve_metrics(self.monitor, self.ports["metrics"])
        self.threads.append(threading.Thread(target=self.monitor.run, daemon=True))
        for thread in self.threads:
            thread.start()
        return {"bootstrap_servers": bootstrap, "monitor_metrics": self.metrics_url}

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def describe(self) -> str:
        return (f"Kafka broker (embedded):  {self.broker.bootstrap_servers}  topics turbofan.sensors / .alerts / .dlq; "
                f"replay of the {self.training['subset']} test engines at {self.rate:.0f} messages/s, looping; "
                f"monitor metrics: {self.metrics_url}")

    def failed(self) -> bool:
        return self.broker is not None and self.broker.process.poll() is not None

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        for thread in self.threads:
            thread.join(15)
        if self.broker is not None:
            self.broker.stop()
