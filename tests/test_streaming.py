"""The streaming foundation: embedded broker lifecycle, the sensor message schema, the replay producer, and the
alert state machine."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from streaming.alerts import AlertRule, AlertStateMachine
from streaming.broker import TOPICS, EmbeddedBroker, ensure_topics
from streaming.monitor import EngineWindow
from streaming.replay import RateLimiter, load_replay, replay
from streaming.schema import MessageError, parse_reading, reading_from_row
from tests.conftest import REPO, assert_clean_failure, free_port, run_cli_here, sigkill_leaves_no_children
from training.data.cmapss import SENSORS, windows_per_cycle

ROW = [3, 17, -0.0007, -0.0004, 100.0, *([518.67] * 21)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with EmbeddedBroker(tmp_path_factory.mktemp("broker"), free_port()) as running:
        ensure_topics(running.bootstrap_servers)
        yield running


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=int(timeout * 1000))
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_schema_round_trip_and_rejections():
    reading = reading_from_row(ROW, event_time=1.0e9)
    assert parse_reading(reading.to_bytes()) == reading and reading.engine_id == 3 and reading.cycle == 17
    bad = {
        b"{not json": "not JSON",
        b"[1, 2]": "expected a JSON object",
        json.dumps({**reading.model_dump(), "schema_version": 2}).encode(): "schema_version 2 is not supported",
        json.dumps({**reading.model_dump(), "sensors": [1.0] * 20}).encode(): "sensors",
        reading.to_bytes().replace(b"518.67", b"NaN", 1): "sensors.0",
        json.dumps({**reading.model_dump(), "cycle": 0}).encode(): "cycle",
        None: "empty message",
    }
    for raw, reason in bad.items():
        with pytest.raises(MessageError, match=reason.replace("(", r"\(")):
            parse_reading(raw)


def test_replay_interleaves_engines_by_cycle_and_keys_by_engine(broker, synthetic_cmapss):
    frame = load_replay(synthetic_cmapss, "FD001", "test", engines=[1, 2, 3])
    assert list(frame["cycle"][:3]) == [1, 1, 1] and list(frame["unit"][:3]) == [1, 2, 3]
    result = replay(broker.bootstrap_servers, frame, rate=0, progress=False)
    assert result.messages == len(frame)
    records = consume_all(broker.bootstrap_servers, TOPICS["sensors"], len(frame))
    assert len(records) == len(frame)
    by_engine: dict[int, list[int]] = {}
    for record in records:
        reading = parse_reading(record.value)
        assert record.key == str(reading.engine_id).encode()
        by_engine.setdefault(reading.engine_id, []).append(reading.cycle)
    for engine, cycles in by_engine.items():  # one partition per key: each engine's cycles arrive in order
        assert cycles == sorted(cycles) and cycles[0] == 1, engine
    assert sorted(by_engine) == [1, 2, 3]


class FakeClock:
    """perf_counter and sleep for streaming.replay: time moves only when the code sleeps or the test says so."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_keeps_the_average_rate_and_catches_up_after_a_stall(monkeypatch):
    import streaming.replay

    clock = FakeClock()
    monkeypatch.setattr(streaming.replay, "time", clock)
    limiter = RateLimiter(200)
    for _ in range(100):
        limiter.wait()
    assert clock.now == pytest.approx(0.5) and len(clock.slept) == 100
    clock.now += 0.1001  # the caller stalled for 20 calls' worth: the next 20 go at once, then the pace resumes
    for _ in range(40):
        limiter.wait()
    assert clock.now == pytest.approx(0.7) and len(clock.slept) == 100 + 20


def test_rate_limiter_is_never_faster_than_its_rate():
    limiter, start = RateLimiter(1000), time.perf_counter()
    for _ in range(100):
        limiter.wait()
    assert time.perf_counter() - start >= 0.099


def test_replay_cli_publishes_the_subset_split_and_engines_asked_for_and_loops_until_stopped(tmp_path):
    """`stream replay --subset FD003 --split train --engines 2,5 --rate 0 --loop`: the chosen engines' training
    cycles of FD003, as the files hold them, pass after pass (engine ids + 1000 each), until SIGTERM; the count it
    prints is what the topic holds."""
    from training.data.cmapss import synthesize_subset

    synthesize_subset(tmp_path / "data", "FD003", n_train=8, n_test=4, seed=2)
    rows = load_replay(tmp_path / "data", "FD003", "train", [2, 5])
    with EmbeddedBroker(tmp_path / "broker", free_port()) as running:
        ensure_topics(running.bootstrap_servers)
        process = subprocess.Popen([sys.executable, "-m", "apps.cli", "stream", "replay", "--data-dir",
                                    str(tmp_path / "data"), "--bootstrap-servers", running.bootstrap_servers,
                                    "--subset", "FD003", "--split", "train", "--engines", "2,5", "--rate", "0",
                                    "--loop"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        first_passes = consume_all(running.bootstrap_servers, TOPICS["sensors"], 2 * len(rows), timeout=60)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        sent = int(out.split("replayed ")[1].split()[0])
        records = consume_all(running.bootstrap_servers, TOPICS["sensors"], sent, timeout=30)
    assert process.returncode == 0 and len(first_passes) >= 2 * len(rows) and len(records) == sent, out
    readings = sorted((parse_reading(r.value) for r in records), key=lambda r: (r.engine_id, r.cycle))
    by_pass = {}
    for reading in readings:
        by_pass.setdefault(reading.engine_id // 1000, []).append(reading)
    assert {r.engine_id % 1000 for r in readings} == {2, 5} and len(by_pass) >= 2
    first = by_pass[0]
    expected = rows.sort_values(["unit", "cycle"])
    assert [(r.engine_id, r.cycle) for r in first] == list(zip(expected["unit"], expected["cycle"], strict=True))
    assert np.allclose([r.sensors for r in first], expected[SENSORS].to_numpy())
    assert [(r.engine_id - 1000, r.cycle) for r in by_pass[1]] == [(r.engine_id, r.cycle) for r in first]


def test_replay_cli_refuses_bad_input_in_one_line(tmp_path, synthetic_cmapss):
    assert_clean_failure(run_cli_here("stream", "replay", "--data-dir", tmp_path), "test_FD001.txt: file not found")
    assert_clean_failure(run_cli_here("stream", "replay", "--data-dir", synthetic_cmapss, "--engines", "1,999"),
                         "engines [999] are not in test_FD001")
    assert_clean_failure(run_cli_here("stream", "replay", "--data-dir", synthetic_cmapss, "--bootstrap-servers",
                                 f"127.0.0.1:{free_port()}", "--connect-timeout", "2"),
                         "no Kafka broker answered")


def test_broker_command_starts_prints_bootstrap_keeps_its_retention_and_stops_on_sigterm(tmp_path):
    """--keep-records: the broker's older records are deleted (through DeleteRecords) and its data file shrinks."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "stream", "broker", "--port", str(port),
                                "--data-dir", str(tmp_path / "data"), "--keep-records", "100"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        bootstrap = f"127.0.0.1:{port}"
        assert f"bootstrap servers {bootstrap}" in line, line + process.stderr.read()
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        assert set(TOPICS.values()) <= set(admin.list_topics())
        admin.close()

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(2000):
            producer.send(TOPICS["sensors"], key=str(i % 50).encode(), value=reading_from_row(ROW).to_bytes())
        producer.flush()
        producer.close()
        data = tmp_path / "data" / "kafka.json"
        reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        parts = [TopicPartition(TOPICS["sensors"], p) for p in reader.partitions_for_topic(TOPICS["sensors"])]
        deadline = time.monotonic() + 60  # the broker's retention pass runs every 10 s
        while True:
            held = {tp: reader.end_offsets([tp])[tp] - reader.beginning_offsets([tp])[tp] for tp in parts}
            if max(held.values()) <= 100:
                break
            assert time.monotonic() < deadline, f"records still held after 60 s: {held}"
            time.sleep(1)
        reader.close()
        time.sleep(2)  # the broker writes its snapshot about once a second
        assert data.stat().st_size < 600_000, data.stat().st_size  # 2,000 messages held took 1.8 MB
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert "Traceback" not in process.stderr.read()


def test_a_sigkilled_broker_command_leaves_no_broker_holding_its_port(tmp_path):
    """The noida-db binary dies with its launcher however the launcher dies, and the next broker can take the
    port (an orphan kept it, and the next start failed)."""
    port = free_port()
    command = [sys.executable, "-m", "apps.cli", "stream", "broker", "--port", str(port)]
    process = subprocess.Popen([*command, "--data-dir", str(tmp_path / "one")], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert "bootstrap servers" in process.stdout.readline()
    sigkill_leaves_no_children(process, "the broker binary")
    again = subprocess.Popen([*command, "--data-dir", str(tmp_path / "two")], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert f"bootstrap servers 127.0.0.1:{port}" in again.stdout.readline(), again.stderr.read()
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0


def test_alert_fires_once_per_episode_after_k_cycles_and_resolves_with_hysteresis():
    machine = AlertStateMachine(AlertRule(threshold=30.0, consecutive=3, hysteresis=10.0))
    scores = [80, 50, 29, 28, 80, 29, 25, 20, 10, 35, 39, 25, 41, 45, 28, 27, 26]
    #                  ^pending ^reset   ^pending  ^fires(ep1) ^still firing (35, 39 < 40) ^resolved at 41 ^fires(ep2)
    alerts = [a for cycle, s in enumerate(scores, 1) if (a := machine.update(7, cycle, s))]
    assert [(a.key, a.cycle) for a in alerts] == [("engine-7-episode-1", 8), ("engine-7-episode-2", 17)]
    assert alerts[0].severity == "warning" and machine.state_of(7) == "firing"
    assert machine.update(7, 18, 10.0) is None  # a firing engine never re-alerts
    high = AlertStateMachine(AlertRule(threshold=1.0, alarm_when_high=True, consecutive=1, hysteresis=0.1))
    assert high.update(1, 1, 2.5).severity == "critical" and high.update(1, 2, 0.95) is None
    assert high.state_of(1) == "firing" and high.update(1, 3, 0.8) is None and high.state_of(1) == "normal"


def test_engine_window_matches_the_training_windows_cycle_by_cycle():
    """The monitor's per-engine buffer must give the model what training gave it: padding at the start, then a
    sliding window, also after the buffer has wrapped around several times."""
    rows = np.random.default_rng(0).normal(size=(95, 4)).astype(np.float32)
    expected = windows_per_cycle(rows, np.ones(len(rows), dtype=int), window=30)
    buffer, got = EngineWindow(partition=0, window=30, n_features=4), np.empty((30, 4), dtype=np.float32)
    for cycle, row in enumerate(rows):
        buffer.append(row)
        buffer.write(got)
        np.testing.assert_array_equal(got, expected[cycle], err_msg=f"cycle {cycle + 1}")
