"""The turbofan monitor: a Kafka consumer group that scores every engine cycle and raises de-duplicated alerts.

Per poll: parse each message (bad ones -> `turbofan.dlq` with the reason in headers), append the cycle to its
engine's window, score all touched windows in one ONNX Runtime call, step each engine's AlertStateMachine, produce
the alerts, flush, and only then commit the offsets (at-least-once).

Recovery: when a partition is assigned (first start, restart after a crash, rebalance), its engines' windows and
alert states are rebuilt by re-reading the partition from its beginning up to the committed offset without emitting
anything, so the monitor neither misses nor re-fires an alert. Messages after the committed offset that were
processed before a crash are processed again; their alerts carry the same idempotent key (engine + episode). Dead
letters are keyed by their source (topic:partition:offset, the original key in a header), and before re-sending
one after an assignment the monitor reads which of that partition's messages the DLQ already holds (records since
the first uncommitted message), so a crash leaves each bad message in the DLQ once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.predictor import TurbofanPredictor
from streaming.alerts import AlertRule, AlertStateMachine, EngineState
from streaming.broker import TOPICS
from streaming.schema import MessageError, SensorReading, parse_reading

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
    # An engine not heard from for this long in its partition's stream time (event times) is forgotten: its window,
    # alert state and metric series go, so a replay that loops, or a fleet that turns over, keeps memory flat.
    forget_after_s: float = 300.0


class EngineWindow:
    """An engine's last `window` feature rows, kept in a preallocated array (twice the window, shifted back when
    full) so each cycle costs one row copy, not a new array from a deque."""

    def __init__(self, partition: int, window: int, n_features: int) -> None:
        self.partition, self.window = partition, window
        self._rows = np.empty((2 * window, n_features), dtype=np.float32)
        self._count = 0

    def append(self, row: np.ndarray) -> None:
        if self._count == len(self._rows):
            self._rows[: self.window - 1] = self._rows[self._count - self.window + 1:]
            self._count = self.window - 1
        self._rows[self._count] = row
        self._count += 1

    def write(self, out: np.ndarray) -> None:
        """The window ending at the newest row into `out`; an engine's first cycles repeat its first row, as in
        training (TurbofanPredictor.last_window)."""
        count, window = self._count, self.window
        if count >= window:
            out[:] = self._rows[count - window:count]
        else:
            out[: window - count] = self._rows[0]
            out[window - count:] = self._rows[:count]


class RecentSamples:
    """The samples of the last `window_s` seconds (at most `cap` of them, the newest), for quantiles that say how
    the monitor does now, as a Prometheus summary's sliding window does, rather than over its whole life."""

    def __init__(self, window_s: float = 300.0, cap: int = 50_000, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.window_s, self.clock = window_s, clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=cap)

    def add(self, values: Iterable[float]) -> None:
        """From one thread only; readers (the /metrics thread) only copy."""
        now = self.clock()
        self._samples.extend((now, v) for v in values)
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def values(self) -> np.ndarray:
        horizon = self.clock() - self.window_s
        return np.array([v for t, v in list(self._samples) if t >= horizon])

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """The quantiles of the samples in the window, or None when it holds none."""
        values = self.values()
        return np.quantile(values, qs).tolist() if len(values) else None


@dataclass
class MonitorStats:
    messages: int = 0
    alerts: int = 0
    dlq: int = 0
    latencies: RecentSamples = field(default_factory=RecentSamples)  # event time -> alert produced (s)
    scored_latencies: RecentSamples = field(default_factory=RecentSamples)  # event time -> scored (s)
    lag: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class TurbofanMonitor:
    RETIRED_ENGINES = 100_000  # forgotten engines whose episode counts are kept
    # Seconds of stream time between two sweeps for quiet engines: a sweep walks every window (2,400 at the soak's
    # 1,000 messages/s), and after every poll it took 15% of the monitor's samples, as much as scoring.
    SWEEP_EVERY_S = 1.0

    def __init__(self, settings: MonitorSettings, predictor: TurbofanPredictor | None = None) -> None:
        self.settings = settings
        self.predictor = predictor or TurbofanPredictor(settings.checkpoint, settings.runtime)
        self.rule = AlertRule.from_detector(self.predictor.detector, settings.consecutive, settings.hysteresis)
        self.alerts = AlertStateMachine(self.rule)
        self.windows: dict[int, EngineWindow] = {}
        self.last_cycle: dict[int, int] = {}
        self.last_event: dict[int, float] = {}  # engine -> event time of its latest reading
        self.stream_time: dict[int, float] = {}  # partition -> newest event time read
        # Forgotten engines' alert episodes so far (partition, count), so one that comes back continues its episode
        # numbering and its alert keys stay unique; the oldest go first past RETIRED_ENGINES.
        self.retired: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # partition -> first offset this group has not processed yet (None: to be looked up after an assignment)
        self.replay_until: dict[Any, int | None] = {}
        # partition -> create time (ms) of its first message not committed before this assignment; and the
        # offsets of that partition which the DLQ already holds (read when the first bad message needs them)
        self.resume_ms: dict[Any, int] = {}
        self.in_dlq: dict[Any, set[int]] = {}
        self.stats = MonitorStats()
        self.latest: dict[int, dict[str, Any]] = {}  # engine -> last assessment (for dashboards)
        self._swept_at = 0.0  # the stream time of the last sweep for quiet engines
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
                    monitor.resume_ms.pop(tp, None)
                    monitor.in_dlq.pop(tp, None)
                    monitor.consumer.seek_to_beginning(tp)

        consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=self.settings.group,
                                 group_instance_id=self.settings.instance_id, enable_auto_commit=False,
                                 auto_offset_reset="earliest", max_poll_records=self.settings.max_records,
                                 session_timeout_ms=10_000, heartbeat_interval_ms=2_000)
        consumer.subscribe([TOPICS["sensors"]], listener=Rebuild())
        producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=2)
        return consumer, producer

    def _forget(self, partition: int) -> None:
        """Everything known about a partition's engines (it is rebuilt from the partition when assigned again)."""
        for engine in [e for e, w in self.windows.items() if w.partition == partition]:
            self._forget_engine(engine)
        for engine in [e for e, (p, _) in self.retired.items() if p == partition]:
            del self.retired[engine]
        self.stream_time.pop(partition, None)

    def _forget_engine(self, engine: int) -> None:
        self.last_cycle.pop(engine, None)
        self.last_event.pop(engine, None)
        self._retire(engine)

    def _retire(self, engine: int) -> None:
        """Drop an engine's window, alert state and latest score, keeping its episode count."""
        window = self.windows.pop(engine, None)
        self.latest.pop(engine, None)
        state = self.alerts.engines.pop(engine, None)
        if window is not None and state is not None:
            self.retired[engine] = (window.partition, state.episode)
            self.retired.move_to_end(engine)
            while len(self.retired) > self.RETIRED_ENGINES:
                self.retired.popitem(last=False)

    def _forget_quiet(self) -> None:
        """Forget the engines not heard from for forget_after_s of their partition's stream time."""
        forget_after = self.settings.forget_after_s
        for engine, window in list(self.windows.items()):
            if self.last_event.get(engine, 0.0) < self.stream_time.get(window.partition, 0.0) - forget_after:
                self._forget_engine(engine)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close()

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self, max_idle_s: float | None = None) -> None:
        """Poll until stop() (or, for batch use and tests, until nothing arrived for max_idle_s while this monitor
        held partitions: joining a group takes some brokers seconds)."""
        from kafka.errors import KafkaError

        idle_since, last_log = time.monotonic(), time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    batches = self.consumer.poll(self.settings.poll_ms)
                    if batches:
                        self.process(batches)
                    if batches or not self.consumer.assignment():
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

        # In arrival order: reading, partition, silent (re-read after an assignment), and whether it begins a new
        # history of its engine (heard again after forget_after_s).
        readings: list[tuple[SensorReading, int, bool, bool]] = []
        offsets = {}
        for tp in batches:
            if self.replay_until.get(tp, 0) is None:
                self.replay_until[tp] = self.consumer.committed(tp) or 0
        for tp, records in batches.items():
            for record in records:
                silent = record.offset < self.replay_until.get(tp, 0)
                if not silent:
                    self.resume_ms.setdefault(tp, record.timestamp)
                reading, fresh = self._validate(record, silent)
                if reading is not None:
                    readings.append((reading, record.partition, silent, fresh))
            # Never move a partition's offset back while its history is being re-read after an assignment.
            if records[-1].offset + 1 > self.replay_until.get(tp, 0):
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if readings:
            self._score_and_alert(readings)
            newest = max(self.stream_time.values(), default=0.0)
            if newest - self._swept_at >= self.SWEEP_EVERY_S:
                self._forget_quiet()
                self._swept_at = newest
        self.producer.flush()  # alerts and dead letters are on the broker before the offsets move
        if offsets:
            try:
                self.consumer.commit(offsets)
            except CommitFailedError as exc:  # the partitions moved: their new owner rebuilds from the last commit
                log.warning("offsets not committed (%s); their messages will be processed again", exc)

    def _validate(self, record, silent: bool) -> tuple[SensorReading | None, bool]:
        """A well-formed reading that continues its engine's history (or, after a silence of forget_after_s, begins
        a new one: then True), or None (dead-lettered unless re-read)."""
        try:
            reading = parse_reading(record.value)
            engine = reading.engine_id
            # Decided here, in the order of the partition's records, so a history re-read after an assignment
            # (in other batches) is cut where it was cut the first time.
            fresh = reading.event_time - self.last_event.get(engine, reading.event_time) > self.settings.forget_after_s
            last = 0 if fresh else self.last_cycle.get(engine, 0)
            if reading.cycle <= last:
                raise MessageError(f"out-of-order cycle {reading.cycle} for engine {reading.engine_id} "
                                   f"(last seen {last})")
        except MessageError as exc:
            if not silent:
                self._dead_letter(record, str(exc))
            return None, False
        self.last_cycle[engine], self.last_event[engine] = reading.cycle, reading.event_time
        self.stream_time[record.partition] = max(self.stream_time.get(record.partition, 0.0), reading.event_time)
        return reading, fresh

    def _score_and_alert(self, readings: list[tuple[SensorReading, int, bool, bool]]) -> None:
        features = self.predictor.features(np.array([r[0].settings for r in readings]),
                                           np.array([r[0].sensors for r in readings]))  # one call per poll
        windows = np.empty((len(readings), self.predictor.window, features.shape[1]), dtype=np.float32)
        for i, ((reading, partition, silent, fresh), row) in enumerate(zip(readings, features, strict=True)):
            if fresh:
                self._retire(reading.engine_id)
            window = self.windows.get(reading.engine_id)
            if window is None:
                window = self.windows[reading.engine_id] = EngineWindow(partition, self.predictor.window,
                                                                        features.shape[1])
                if reading.engine_id in self.retired:
                    self.alerts.engines[reading.engine_id] = EngineState(episode=self.retired.pop(reading.engine_id)[1])
            window.append(row)
            window.write(windows[i])  # as it is at this cycle
            if not silent:
                self.stats.messages += 1
        scores = self.predictor.score(windows)  # one model call per poll
        now = time.time()
        self.stats.scored_latencies.add(now - r.event_time for r, _, silent, _ in readings if not silent)
        for (reading, _, silent, _), score in zip(readings, scores.tolist(), strict=True):
            alert = self.alerts.update(reading.engine_id, reading.cycle, score, reading.event_time)
            self.latest[reading.engine_id] = {"cycle": reading.cycle, "score": score, "event_time": reading.event_time,
                                              "state": self.alerts.state_of(reading.engine_id)}
            if alert is not None and not silent:
                self._publish(alert)

    def _publish(self, alert) -> None:
        now = time.time()
        key = "reconstruction_error" if self.rule.alarm_when_high else "predicted_rul"
        payload = {**alert.to_dict(), key: alert.score, "threshold": self.rule.threshold,
                   "detected_at": now, "checkpoint": str(self.settings.checkpoint)}
        self.producer.send(TOPICS["alerts"], key=alert.key.encode(), value=json.dumps(payload).encode())
        self.stats.alerts += 1
        self.stats.latencies.add([now - alert.event_time])

    def _dead_letter(self, record, reason: str) -> None:
        from kafka import TopicPartition

        tp = TopicPartition(record.topic, record.partition)
        if tp not in self.in_dlq:
            self.in_dlq[tp] = self._dead_lettered_offsets(tp, self.resume_ms.get(tp, record.timestamp))
        if record.offset in self.in_dlq[tp]:  # sent before a crash, between the flush and the commit
            return
        source = f"{record.topic}:{record.partition}:{record.offset}"
        headers = [("error", reason.encode()), ("source", source.encode()), ("group", self.settings.group.encode()),
                   ("original_key", record.key or b"")]
        self.producer.send(TOPICS["dlq"], key=source.encode(), value=record.value if record.value is not None
                           else b"", headers=headers)
        self.in_dlq[tp].add(record.offset)
        self.stats.dlq += 1

    # Producer clocks may differ by this much: DLQ records are read from this long before the first uncommitted
    # message's create time.
    CLOCK_SLACK_MS = 60_000

    def _dead_lettered_offsets(self, tp, since_ms: int) -> set[int]:
        """Offsets of source partition `tp` that this group has already dead-lettered since `since_ms`."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import UnsupportedVersionError

        reader = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                               enable_auto_commit=False)
        try:
            parts = [TopicPartition(TOPICS["dlq"], p) for p in sorted(reader.partitions_for_topic(TOPICS["dlq"])
                                                                      or [])]
            if not parts:
                return set()
            reader.assign(parts)
            ends = reader.end_offsets(parts)
            try:
                starts = reader.offsets_for_times({p: max(0, since_ms - self.CLOCK_SLACK_MS) for p in parts})
            except UnsupportedVersionError:  # a broker without time lookups: read the whole topic
                starts = {p: reader.beginning_offsets([p])[p] for p in parts}
            for p in parts:
                start = starts.get(p)
                reader.seek(p, ends[p] if start is None else getattr(start, "offset", start))
            source_prefix, group = f"{tp.topic}:{tp.partition}:", self.settings.group.encode()
            offsets: set[int] = set()
            deadline = time.monotonic() + 30
            while any(reader.position(p) < ends[p] for p in parts):
                if time.monotonic() > deadline:  # an unreadable DLQ must not stop scoring; at worst a duplicate
                    log.warning("could not read %s to its end; a bad message may be dead-lettered twice", TOPICS["dlq"])
                    break
                for records in reader.poll(500).values():
                    for record in records:
                        headers = dict(record.headers or [])
                        source = headers.get("source", b"").decode(errors="replace")
                        if headers.get("group") == group and source.startswith(source_prefix):
                            offsets.add(int(source.rsplit(":", 1)[1]))
            return offsets
        finally:
            reader.close()

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
        latency = np.array(self.stats.latencies.quantiles([0.5, 0.99]) or [np.nan] * 2) * 1000
        return (f"messages {self.stats.messages} ({self.stats.messages / elapsed:.0f}/s)  alerts {self.stats.alerts}"
                f"  dlq {self.stats.dlq}  event->alert p50 {latency[0]:.0f} ms p99 {latency[1]:.0f} ms (5 min)  "
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
            # The alarm rule, so a dashboard can mark it beside the scores: the score it compares and how.
            rule = GaugeMetricFamily("modelyard_monitor_alarm_threshold", "score at which an engine is in alarm",
                                     labels=["score", "direction", "alert_rul"])
            rule.add_metric(["reconstruction_error" if monitor.rule.alarm_when_high else "predicted_rul",
                             "above" if monitor.rule.alarm_when_high else "below",
                             str(monitor.predictor.detector.get("alert_rul", ""))], monitor.rule.threshold)
            yield rule
            for name, samples, what in (("event_to_alert", stats.latencies, "sensor event time to alert produced"),
                                        ("event_to_scored", stats.scored_latencies, "sensor event time to scored")):
                summary = SummaryMetricFamily(f"modelyard_monitor_{name}_seconds", f"{what}, over the last "
                                              f"{samples.window_s:g} s", labels=["quantile"])
                for q, value in zip((0.5, 0.99), samples.quantiles([0.5, 0.99]) or [], strict=False):
                    summary.add_sample(f"modelyard_monitor_{name}_seconds", {"quantile": str(q)}, value)
                yield summary
            lag = GaugeMetricFamily("modelyard_monitor_consumer_lag", "messages behind, per partition",
                                    labels=["partition"])
            for partition, behind in sorted(stats.lag.items()):
                lag.add_metric([str(partition)], behind)
            yield lag
            # Per engine: what the dashboard charts (predicted RUL, or reconstruction error) and at which cycle.
            score = GaugeMetricFamily("modelyard_monitor_engine_score", "latest score per engine",
                                      labels=["engine", "state"])
            cycle = GaugeMetricFamily("modelyard_monitor_engine_cycle", "latest cycle per engine", labels=["engine"])
            seen = GaugeMetricFamily("modelyard_monitor_engine_event_time_seconds",
                                     "event time of the engine's latest reading", labels=["engine"])
            for engine, latest in sorted(dict(monitor.latest).items()):
                score.add_metric([str(engine), latest["state"]], latest["score"])
                cycle.add_metric([str(engine)], latest["cycle"])
                seen.add_metric([str(engine)], latest["event_time"])
            yield from (score, cycle, seen)
            yield GaugeMetricFamily("modelyard_monitor_stream_time_seconds", "newest event time read",
                                    value=max(dict(monitor.stream_time).values(), default=0.0))
            yield GaugeMetricFamily("modelyard_monitor_engines", "engines monitored now", value=len(monitor.windows))

    registry = CollectorRegistry()
    registry.register(MonitorCollector())
    start_http_server(port, addr=host, registry=registry)
