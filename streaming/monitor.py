"""The turbofan monitor: a Kafka consumer group that scores every engine cycle and raises de-duplicated alerts.

Per poll: parse each message (bad ones -> `turbofan.dlq` with the reason in headers), append the cycle to its
engine's window, score all touched windows in one ONNX Runtime call, step each engine's AlertStateMachine, produce
the alerts, flush, and only then commit the offsets (at-least-once).

Recovery: when a partition is assigned (first start, restart after a crash, rebalance), its engines' windows and
alert states are rebuilt by re-reading the partition from its beginning up to the committed offset without emitting
anything, so the monitor neither misses nor re-fires an alert. Messages after the committed offset that were
processed before a crash are processed again; their alerts carry the same idempotent key (engine + episode).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.predictor import TurbofanPredictor
from streaming.alerts import AlertRule, AlertStateMachine
from streaming.broker import TOPICS
from streaming.schema import MessageError, parse_reading

log = logging.getLogger("modelyard.monitor")


@dataclass
class MonitorSettings:
    bootstrap_servers: str
    checkpoint: Path
    group: str = "turbofan-monitor"
    # A stable id per monitor process (Kafka static membership): a restarted monitor takes its partitions back at
    # once instead of waiting for the broker to expire the crashed member's session.
    instance_id: str | None = None
    runtime: str = "onnx"
    consecutive: int = 3
    hysteresis: float | None = None
    poll_ms: int = 100
    max_records: int = 2000
    log_every_s: float = 10.0


@dataclass
class EngineWindow:
    partition: int
    rows: deque
    last_cycle: int = 0


@dataclass
class MonitorStats:
    messages: int = 0
    alerts: int = 0
    dlq: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=5000))  # event time -> alert produced (s)
    lag: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class TurbofanMonitor:
    def __init__(self, settings: MonitorSettings, predictor: TurbofanPredictor | None = None) -> None:
        self.settings = settings
        self.predictor = predictor or TurbofanPredictor(settings.checkpoint, settings.runtime)
        self.rule = AlertRule.from_detector(self.predictor.detector, settings.consecutive, settings.hysteresis)
        self.alerts = AlertStateMachine(self.rule)
        self.windows: dict[int, EngineWindow] = {}
        # partition -> first offset this group has not processed yet (None: to be looked up after an assignment)
        self.replay_until: dict[Any, int | None] = {}
        self.stats = MonitorStats()
        self.latest: dict[int, dict[str, Any]] = {}  # engine -> last assessment (for dashboards)
        self._stop = threading.Event()
        self.consumer, self.producer = self._connect()

    # --- Kafka plumbing -------------------------------------------------------------------------------------------
    def _connect(self):
        from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

        monitor = self

        class Rebuild(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                for tp in revoked:
                    monitor._forget(tp.partition)

            def on_partitions_assigned(self, assigned):
                # Runs on the client's IO thread, where blocking calls are refused: only reset here; the
                # committed offsets are looked up by the polling thread before it processes these partitions.
                for tp in assigned:
                    monitor._forget(tp.partition)
                    monitor.replay_until[tp] = None
                    monitor.consumer.seek_to_beginning(tp)

        consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=self.settings.group,
                                 group_instance_id=self.settings.instance_id, enable_auto_commit=False,
                                 auto_offset_reset="earliest", max_poll_records=self.settings.max_records,
                                 session_timeout_ms=10_000, heartbeat_interval_ms=2_000)
        consumer.subscribe([TOPICS["sensors"]], listener=Rebuild())
        producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=2)
        return consumer, producer

    def _forget(self, partition: int) -> None:
        for engine in [e for e, w in self.windows.items() if w.partition == partition]:
            del self.windows[engine]
            self.alerts.engines.pop(engine, None)
            self.latest.pop(engine, None)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close()

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self, max_idle_s: float | None = None) -> None:
        """Poll until stop() (or until nothing arrived for max_idle_s, for batch use and tests)."""
        from kafka.errors import KafkaError

        idle_since, last_log = time.monotonic(), time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    batches = self.consumer.poll(self.settings.poll_ms)
                    if batches:
                        self.process(batches)
                        idle_since = time.monotonic()
                    elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                        break
                    if time.monotonic() - last_log > self.settings.log_every_s:
                        self._update_lag()
                        log.info(self.summary())
                        last_log = time.monotonic()
                except KafkaError as exc:
                    # Broker restart, coordinator move, rebalance: nothing was committed past what was produced,
                    # so carrying on (re-reading from the committed offsets where needed) loses nothing.
                    log.warning("Kafka error, retrying: %s", exc)
                    self._stop.wait(1.0)
        finally:
            self.close()

    def process(self, batches: dict) -> None:
        from kafka import OffsetAndMetadata
        from kafka.errors import CommitFailedError

        scored: list[tuple[int, int, float, bool, np.ndarray]] = []  # engine, cycle, event time, silent, window
        offsets = {}
        for tp in batches:
            if self.replay_until.get(tp, 0) is None:
                self.replay_until[tp] = self.consumer.committed(tp) or 0
        for tp, records in batches.items():
            for record in records:
                item = self._ingest(record, silent=record.offset < self.replay_until.get(tp, 0))
                if item is not None:
                    scored.append(item)
            # Never move a partition's offset back while its history is being re-read after an assignment.
            if records[-1].offset + 1 > self.replay_until.get(tp, 0):
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if scored:
            self._score_and_alert(scored)
        self.producer.flush()  # alerts and dead letters are on the broker before the offsets move
        if offsets:
            try:
                self.consumer.commit(offsets)
            except CommitFailedError as exc:  # the partitions moved: their new owner rebuilds from the last commit
                log.warning("offsets not committed (%s); their messages will be processed again", exc)

    def _ingest(self, record, silent: bool) -> tuple[int, int, float, bool, np.ndarray] | None:
        """The window ending at this cycle (a copy: later cycles of the same poll must not change it)."""
        try:
            reading = parse_reading(record.value)
            window = self.windows.get(reading.engine_id)
            if window is not None and reading.cycle <= window.last_cycle:
                raise MessageError(f"out-of-order cycle {reading.cycle} for engine {reading.engine_id} "
                                   f"(last seen {window.last_cycle})")
        except MessageError as exc:
            if not silent:
                self._dead_letter(record, str(exc))
            return None
        if window is None:
            window = self.windows[reading.engine_id] = EngineWindow(record.partition,
                                                                    deque(maxlen=self.predictor.window))
        window.rows.append(self.predictor.features(np.asarray([reading.settings]), np.asarray([reading.sensors]))[0])
        window.last_cycle = reading.cycle
        if not silent:
            self.stats.messages += 1
        return (reading.engine_id, reading.cycle, reading.event_time, silent,
                self.predictor.last_window(np.stack(window.rows)))

    def _score_and_alert(self, scored: list[tuple[int, int, float, bool, np.ndarray]]) -> None:
        scores = self.predictor.score(np.stack([item[4] for item in scored]))  # one model call per poll
        for (engine, cycle, event_time, silent, _), score in zip(scored, scores.tolist(), strict=True):
            alert = self.alerts.update(engine, cycle, score, event_time)
            self.latest[engine] = {"cycle": cycle, "score": score, "state": self.alerts.state_of(engine)}
            if alert is not None and not silent:
                self._publish(alert)

    def _publish(self, alert) -> None:
        now = time.time()
        key = "reconstruction_error" if self.rule.alarm_when_high else "predicted_rul"
        payload = {**alert.to_dict(), key: alert.score, "threshold": self.rule.threshold,
                   "detected_at": now, "checkpoint": str(self.settings.checkpoint)}
        self.producer.send(TOPICS["alerts"], key=alert.key.encode(), value=json.dumps(payload).encode())
        self.stats.alerts += 1
        self.stats.latencies.append(now - alert.event_time)

    def _dead_letter(self, record, reason: str) -> None:
        headers = [("error", reason.encode()), ("source", f"{record.topic}:{record.partition}:{record.offset}"
                                                            .encode())]
        self.producer.send(TOPICS["dlq"], key=record.key, value=record.value if record.value is not None else b"",
                           headers=headers)
        self.stats.dlq += 1

    # --- metrics --------------------------------------------------------------------------------------------------
    def _update_lag(self) -> None:
        assigned = list(self.consumer.assignment())
        if not assigned:
            return
        ends = self.consumer.end_offsets(assigned)
        for tp in assigned:
            self.stats.lag[tp.partition] = max(0, ends[tp] - self.consumer.position(tp))

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.stats.started, 1e-9)
        latency = np.percentile(self.stats.latencies, [50, 99]) * 1000 if self.stats.latencies else [np.nan] * 2
        return (f"messages {self.stats.messages} ({self.stats.messages / elapsed:.0f}/s)  alerts {self.stats.alerts}"
                f"  dlq {self.stats.dlq}  event->alert p50 {latency[0]:.0f} ms p99 {latency[1]:.0f} ms  "
                f"lag {sum(self.stats.lag.values())}")


def serve_metrics(monitor: TurbofanMonitor, port: int, host: str = "127.0.0.1") -> None:
    """Prometheus text format on http://host:port/metrics, read live from the monitor's counters."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    class MonitorCollector:
        def collect(self):
            stats = monitor.stats
            yield CounterMetricFamily("modelyard_monitor_messages", "sensor messages scored", value=stats.messages)
            yield CounterMetricFamily("modelyard_monitor_alerts", "alerts produced", value=stats.alerts)
            yield CounterMetricFamily("modelyard_monitor_dlq", "messages sent to the dead-letter topic",
                                      value=stats.dlq)
            rate = stats.messages / max(time.monotonic() - stats.started, 1e-9)
            yield GaugeMetricFamily("modelyard_monitor_messages_per_second", "mean since start", value=rate)
            latency = SummaryMetricFamily("modelyard_monitor_event_to_alert_seconds",
                                          "sensor event time to alert produced", labels=["quantile"])
            if stats.latencies:
                for q in (0.5, 0.99):
                    latency.add_sample("modelyard_monitor_event_to_alert_seconds", {"quantile": str(q)},
                                       float(np.quantile(stats.latencies, q)))
            yield latency
            lag = GaugeMetricFamily("modelyard_monitor_consumer_lag", "messages behind, per partition",
                                    labels=["partition"])
            for partition, behind in sorted(stats.lag.items()):
                lag.add_metric([str(partition)], behind)
            yield lag

    registry = CollectorRegistry()
    registry.register(MonitorCollector())
    start_http_server(port, addr=host, registry=registry)
