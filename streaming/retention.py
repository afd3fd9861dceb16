"""Retention for a broker that keeps every record: at most `keep` records per partition of its topics (all but
the broker's internal `__` ones), the older ones deleted through the Kafka protocol (DeleteRecords), so it works
against any broker.

noida-db, the embedded broker, accepts the topic configs retention.ms and retention.bytes but never deletes by them
(measured with noida-db 0.2.3: a topic with retention.ms=5000 still held every record after 80 s), while it does honour
DeleteRecords and then shrinks its data file (20,000 sensor messages: 18.0 MB, 1.9 MB after deleting all but 1,000
per partition). A sensor message takes about 0.9 KB there, so the default 15,000 records per partition bounds the
demo's three 4-partition topics to about 160 MB however long it runs.

Records are deleted whatever the consumers have read, as Kafka's own retention does: a consumer group that falls
more than `keep` records behind loses the oldest of them (at the replay's 200 messages/s over 4 partitions, 15,000
per partition is five minutes of the stream). Its committed offsets stay valid: a monitor that rebuilds its engines
after an assignment reads from what is left.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

log = logging.getLogger("modelyard.retention")

KEEP_RECORDS = 15_000


def trim(bootstrap_servers: str, keep: int, topics: Iterable[str] | None = None) -> dict[str, int]:
    """Delete all but the newest `keep` records of each partition of `topics` (default: every topic but the
    internal ones); returns the records deleted per topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    reader = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
    try:
        names = [t for t in reader.topics() if not t.startswith("__")] if topics is None else topics
        parts = [TopicPartition(topic, p) for topic in names for p in sorted(reader.partitions_for_topic(topic) or [])]
        starts, ends = (reader.beginning_offsets(parts), reader.end_offsets(parts)) if parts else ({}, {})
    finally:
        reader.close()
    cut = {tp: ends[tp] - keep for tp in parts if ends[tp] - starts[tp] > keep}
    if cut:  # an admin connection only on the passes that delete something
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
        try:
            admin.delete_records(cut)
        finally:
            admin.close()
    deleted: dict[str, int] = {}
    for tp, offset in cut.items():
        deleted[tp.topic] = deleted.get(tp.topic, 0) + offset - starts[tp]
    return deleted


class RetentionKeeper:
    """Runs `trim` every `every_s` seconds on a daemon thread until stop(); a broker that is down (restarting, or
    killed by a test) is retried at the next turn."""

    def __init__(self, bootstrap_servers: str, keep: int = KEEP_RECORDS, every_s: float = 10.0) -> None:
        if keep < 1:
            raise ValueError(f"keep {keep}: at least one record per partition")
        self.bootstrap_servers, self.keep, self.every_s = bootstrap_servers, keep, every_s
        self.deleted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> RetentionKeeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        from kafka.errors import KafkaError

        while not self._stop.wait(self.every_s):
            try:
                self.deleted += sum(trim(self.bootstrap_servers, self.keep).values())
            except (KafkaError, OSError) as exc:
                log.info("retention pass skipped: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
