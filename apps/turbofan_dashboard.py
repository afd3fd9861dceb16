"""The "Turbofan monitor" tab: predicted RUL per engine (from the monitor's Prometheus /metrics) and the alert feed
(from the `turbofan.alerts` topic), refreshed every second."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

import gradio as gr
import pandas as pd

from streaming.broker import TOPICS

log = logging.getLogger(__name__)
ALERT_COLUMNS = ["key", "engine_id", "cycle", "severity", "score", "detected"]


class AlertFeed:
    """Reads `turbofan.alerts` from the beginning in a background thread; keeps one row per alert key."""

    def __init__(self, bootstrap_servers: str, keep: int = 200) -> None:
        self.bootstrap_servers, self.rows = bootstrap_servers, deque(maxlen=keep)
        self._seen: set[str] = set()
        self.error: str | None = None  # the last failure to read the topic, shown in the status line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="alert-feed")
        self._thread.start()

    def _run(self) -> None:
        from kafka import KafkaConsumer

        while not self._stop.is_set():
            consumer = None
            try:
                consumer = KafkaConsumer(TOPICS["alerts"], bootstrap_servers=self.bootstrap_servers, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
                while not self._stop.is_set():
                    for records in consumer.poll(500).values():
                        for record in records:
                            self._add(record.value)
                    self.error = None
            # Any failure (broker restarting, a client error) must not end the feed thread silently: the tab
            # would go on showing a stale table. Reported in the status line, retried shortly.
            except Exception as exc:  # noqa: BLE001
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("alert feed: %s; retrying", self.error)
                self._stop.wait(1.0)
            finally:
                if consumer is not None:
                    consumer.close()

    def _add(self, value: bytes) -> None:
        try:
            alert = json.loads(value)
            key = alert["key"]
        except (ValueError, KeyError, TypeError):
            return
        if key in self._seen:  # an at-least-once duplicate
            return
        self._seen.add(key)
        detected = time.strftime("%H:%M:%S", time.localtime(alert.get("detected_at", time.time())))
        self.rows.appendleft([key, alert.get("engine_id"), alert.get("cycle"), alert.get("severity"),
                              alert.get("score"), detected])

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows), columns=ALERT_COLUMNS)

    def close(self) -> None:
        self._stop.set()


def read_engine_scores(metrics_url: str) -> dict[int, dict[str, Any]]:
    """engine -> {score, state, cycle} from the monitor's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=2) as response:
        text = response.read().decode()
    engines: dict[int, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelyard_monitor_engine_score":
                engines.setdefault(int(sample.labels["engine"]), {}).update(score=sample.value,
                                                                            state=sample.labels["state"])
            elif sample.name == "modelyard_monitor_engine_cycle":
                engines.setdefault(int(sample.labels["engine"]), {})["cycle"] = int(sample.value)
    return engines


class ScoreHistory:
    """Score per engine and cycle as polled, for the chart (the `engines` most at risk are drawn)."""

    def __init__(self, engines: int = 8, keep: int = 400) -> None:
        self.engines, self.keep = engines, keep
        self.history: dict[int, dict[int, float]] = {}
        self.latest: dict[int, dict[str, Any]] = {}

    def update(self, scores: dict[int, dict[str, Any]]) -> None:
        self.latest = scores
        for engine, item in scores.items():
            if "cycle" in item and "score" in item:
                points = self.history.setdefault(engine, {})
                points[item["cycle"]] = item["score"]
                if len(points) > self.keep:
                    points.pop(min(points))

    def frame(self, alarm_when_high: bool = False) -> pd.DataFrame:
        risk = sorted(self.latest, key=lambda e: self.latest[e].get("score", 0), reverse=alarm_when_high)
        rows = [{"engine": f"engine {e}", "cycle": c, "score": s}
                for e in risk[:self.engines] for c, s in sorted(self.history.get(e, {}).items())]
        frame = pd.DataFrame(rows, columns=["engine", "cycle", "score"])
        return frame.astype({"engine": str, "cycle": int, "score": float})  # numeric axes, not categories


def turbofan_tab(bootstrap_servers: str, metrics_url: str) -> None:
    feed, history = AlertFeed(bootstrap_servers), ScoreHistory()
    gr.Markdown(f"Live fleet: predicted remaining useful life per engine (the 8 closest to failure), from the "
                f"monitor at {metrics_url}, and alerts from `{TOPICS['alerts']}` on {bootstrap_servers}.")
    status = gr.Markdown("waiting for the monitor ...", elem_id="turbofan-status")
    chart = gr.LinePlot(pd.DataFrame(columns=["engine", "cycle", "score"]), x="cycle", y="score", color="engine",
                        title="predicted RUL (cycles)", elem_id="turbofan-chart", height=320)
    alerts = gr.Dataframe(feed.table(), label="alerts (newest first)", elem_id="turbofan-alerts",
                          interactive=False)

    def refresh() -> tuple[str, pd.DataFrame, pd.DataFrame]:
        try:
            history.update(read_engine_scores(metrics_url))
            firing = sum(1 for item in history.latest.values() if item.get("state") == "firing")
            message = f"{len(history.latest)} engines monitored, {firing} in alarm, {len(feed.rows)} alerts so far"
            if feed.error:
                message += f" (alert feed: {feed.error})"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            message = f"monitor metrics unavailable at {metrics_url}: {exc}"
        return message, history.frame(), feed.table()

    gr.Timer(1.0).tick(refresh, outputs=[status, chart, alerts])
