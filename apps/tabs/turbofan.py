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
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from apps.tabs.svg import figure_svg
from streaming.broker import TOPICS
from training.options import Option

TITLE = "Turbofan monitor"
OPTIONS = (
    Option("bootstrap_servers", str, None, "Kafka bootstrap servers, for the Turbofan monitor tab"),
    Option("monitor_metrics", str, None, "the monitor's metrics URL (.../metrics), for the Turbofan monitor tab"),
)

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


@dataclass
class FleetReading:
    """One poll of the monitor's /metrics: per engine its latest score, state and cycle, and the alarm rule."""

    engines: dict[int, dict[str, Any]] = field(default_factory=dict)
    stream_time: float = 0.0  # the newest event time the monitor has read
    threshold: float | None = None
    score: str = "predicted_rul"  # or reconstruction_error
    alarm_when_high: bool = False
    alert_rul: str = ""


def read_fleet(metrics_url: str) -> FleetReading:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=2) as response:
        text = response.read().decode()
    reading = FleetReading()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelyard_monitor_engine_score":
                reading.engines.setdefault(int(sample.labels["engine"]), {}).update(score=sample.value,
                                                                                    state=sample.labels["state"])
            elif sample.name == "modelyard_monitor_engine_cycle":
                reading.engines.setdefault(int(sample.labels["engine"]), {})["cycle"] = int(sample.value)
            elif sample.name == "modelyard_monitor_engine_event_time_seconds":
                reading.engines.setdefault(int(sample.labels["engine"]), {})["event_time"] = sample.value
            elif sample.name == "modelyard_monitor_stream_time_seconds":
                reading.stream_time = sample.value
            elif sample.name == "modelyard_monitor_alarm_threshold":
                reading.threshold, reading.score = sample.value, sample.labels["score"]
                reading.alarm_when_high = sample.labels["direction"] == "above"
                reading.alert_rul = sample.labels["alert_rul"]
    return reading


class ScoreHistory:
    """Score per engine and cycle as polled, for the chart: the `engines` most at risk among those streaming now
    (heard from within `live_s` of the monitor's stream time). Engines that stop streaming are dropped, so the
    history stays as small as the fleet that streams."""

    def __init__(self, engines: int = 8, keep: int = 200, live_s: float = 10.0) -> None:
        self.engines, self.keep, self.live_s = engines, keep, live_s
        self.history: dict[int, dict[int, float]] = {}
        self.latest: dict[int, dict[str, Any]] = {}

    def update(self, scores: dict[int, dict[str, Any]], stream_time: float) -> None:
        since = stream_time - self.live_s
        self.latest = {e: item for e, item in scores.items()
                       if {"cycle", "score"} <= item.keys() and item.get("event_time", 0.0) >= since}
        self.history = {e: points for e, points in self.history.items() if e in self.latest}
        for engine, item in self.latest.items():
            points = self.history.setdefault(engine, {})
            points[item["cycle"]] = item["score"]
            if len(points) > self.keep:
                points.pop(min(points))

    def at_risk(self, alarm_when_high: bool = False) -> list[int]:
        """Engines to draw: streaming now, with at least two cycles polled (a line, not a dot)."""
        lines = [e for e in self.latest if len(self.history.get(e, ())) > 1]
        return sorted(lines, key=lambda e: self.latest[e]["score"], reverse=alarm_when_high)[:self.engines]


def fleet_chart(history: ScoreHistory, reading: FleetReading) -> str:
    """An inline SVG line chart: one line (with a point per poll) per engine at risk over its recent cycles, numeric
    axes, and the alarm threshold as a dashed line. SVG in the page (text kept as text) so it stays sharp, and so
    what is drawn can be checked in a browser."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    engines = history.at_risk(reading.alarm_when_high)
    label = "reconstruction error" if reading.alarm_when_high else "predicted RUL (cycles)"
    with plt.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(9.5, 3.4), dpi=100)
        for engine in engines:
            points = sorted(history.history.get(engine, {}).items())
            ax.plot([c for c, _ in points], [s for _, s in points], marker=".", markersize=3, linewidth=1.4,
                    label=f"engine {engine}", gid=f"engine-{engine}")  # the SVG group's id
        if reading.threshold is not None:
            horizon = f" (alert horizon: true RUL <= {float(reading.alert_rul):g})" if reading.alert_rul else ""
            ax.axhline(reading.threshold, color="#c0392b", linestyle="--", linewidth=1.2, gid="alarm-threshold",
                       label=f"alarm {'above' if reading.alarm_when_high else 'below'} {reading.threshold:.1f}"
                             f"{horizon}")
        ax.set_xlabel("cycle")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if not engines:
            ax.text(0.5, 0.5, "waiting for engine readings", transform=ax.transAxes, ha="center", color="#777777")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        return figure_svg(fig)


def wanted(values: dict[str, Any]) -> bool:
    return values.get("bootstrap_servers") is not None and values.get("monitor_metrics") is not None


def build(values: dict[str, Any]) -> None:
    import gradio as gr

    bootstrap_servers, metrics_url = values["bootstrap_servers"], values["monitor_metrics"]
    feed, history = AlertFeed(bootstrap_servers), ScoreHistory()
    gr.Markdown(f"Live fleet: the {history.engines} engines closest to failure among those streaming, from the "
                f"monitor at {metrics_url}, and alerts from `{TOPICS['alerts']}` on {bootstrap_servers}. The demo's "
                "replay loops over the test engines, each pass a new fleet with new engine ids (+1000 per pass); "
                "the monitor forgets an engine it has not heard from for five minutes of stream time.")
    status = gr.Markdown("waiting for the monitor ...", elem_id="turbofan-status")
    chart = gr.HTML(fleet_chart(history, FleetReading()), elem_id="turbofan-chart")
    alerts = gr.Dataframe(feed.table(), label="alerts (newest first)", elem_id="turbofan-alerts",
                          interactive=False)

    def refresh() -> tuple[str, str, pd.DataFrame]:
        reading = FleetReading()
        try:
            reading = read_fleet(metrics_url)
            history.update(reading.engines, reading.stream_time)
            firing = sum(1 for item in reading.engines.values() if item.get("state") == "firing")
            message = (f"{len(reading.engines)} engines monitored ({len(history.latest)} streaming now), {firing} in "
                       f"alarm, {len(feed.rows)} alerts so far")
            if feed.error:
                message += f" (alert feed: {feed.error})"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            message = f"monitor metrics unavailable at {metrics_url}: {exc}"
        return message, fleet_chart(history, reading), feed.table()

    gr.Timer(1.0).tick(refresh, outputs=[status, chart, alerts])
