"""Replay C-MAPSS engines as live sensor streams: one message per engine cycle on `turbofan.sensors`.

A fleet runs side by side, so the replay interleaves engines by cycle: every engine's cycle 1, then every engine's
cycle 2, and so on (engines that have ended drop out). Messages are keyed by engine id, so one engine's cycles stay in
order on one partition. `rate` limits messages per second (0: as fast as the broker takes them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from streaming.broker import TOPICS
from streaming.schema import reading_from_row
from training.data.cmapss import COLUMNS, read_cycles
from training.data.errors import find_data_file


def fleet_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered as a fleet would emit them: by cycle, then engine."""
    return frame.sort_values(["cycle", "unit"], kind="stable").reset_index(drop=True)


def load_replay(data_dir: Path, subset: str, split: str, engines: list[int] | None = None) -> pd.DataFrame:
    if split not in ("train", "test"):
        raise ValueError(f"--split must be train or test, not {split!r}")
    frame = read_cycles(find_data_file(Path(data_dir), f"{split}_{subset}.txt"))
    if engines:
        unknown = sorted(set(engines) - set(frame["unit"].unique().tolist()))
        if unknown:
            raise ValueError(f"engines {unknown} are not in {split}_{subset}")
        frame = frame[frame["unit"].isin(engines)]
    return fleet_order(frame)


@dataclass
class ReplayResult:
    messages: int
    seconds: float


class RateLimiter:
    """At most `rate` calls per second on average, without drift (sleeps to the schedule, not per call)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.perf_counter()

    def wait(self) -> None:
        if not self.interval:
            return
        self.next_at += self.interval
        delay = self.next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


LOOP_ENGINE_OFFSET = 1000


def iter_rows(frame: pd.DataFrame, loop: bool) -> Iterator[np.ndarray]:
    """The rows once, or forever; each pass of a loop is a new fleet (engine ids + 1000 per pass), since an
    engine's cycles only rise."""
    values = frame[COLUMNS].to_numpy()
    shift = 0
    while True:
        for row in values:
            if shift:
                row = row.copy()
                row[0] += shift
            yield row
        if not loop:
            return
        shift += LOOP_ENGINE_OFFSET


def replay(bootstrap_servers: str, frame: pd.DataFrame, rate: float = 0.0, loop: bool = False,
           topic: str = TOPICS["sensors"], stop: threading.Event | None = None,
           progress: bool = True) -> ReplayResult:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5,
                             key_serializer=lambda k: str(k).encode())
    limiter = RateLimiter(rate)
    sent, start = 0, time.perf_counter()
    bar = tqdm(total=None if loop else len(frame), desc="replay", unit="msg", disable=not progress)
    try:
        for row in iter_rows(frame, loop):
            if stop is not None and stop.is_set():
                break
            limiter.wait()
            reading = reading_from_row(row.tolist())
            producer.send(topic, key=reading.engine_id, value=reading.to_bytes())
            sent += 1
            bar.update(1)
        producer.flush()  # nothing is lost on a clean stop: every accepted message reaches the broker
    finally:
        producer.close()
        bar.close()
    return ReplayResult(sent, time.perf_counter() - start)
