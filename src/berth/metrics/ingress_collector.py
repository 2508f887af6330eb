"""Count this server's nginx traffic per app per bucket, and add it to the store.

Every second the collector reads what nginx appended to the metrics log (whole 64 KiB chunks,
flushed by nginx once a second), aggregates it in memory, and every ``flush_seconds`` adds
the counts to this server's rows in one transaction. When the log outgrows ``max_log_bytes``
it is renamed and nginx is told to reopen it (SIGUSR1); the tail reads the old file out first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from berth.metrics import store
from berth.metrics.access_log import LogTail, parse_line
from berth.metrics.model import AppBucket, BucketKey, aggregate
from berth.periodic import PeriodicLoop

log = logging.getLogger(__name__)
READ_SECONDS = 1.0  # nginx flushes its buffer every second: reading more often finds nothing
PURGE_SECONDS = 300.0


class IngressCollector:
    def __init__(
        self,
        log_path: Path,
        sessions: sessionmaker[Session],
        server_id: str,
        *,
        bucket_seconds: int,
        retention_seconds: float,
        flush_seconds: float = 10.0,
        max_log_bytes: int = 64 << 20,
        reopen: Callable[[], None] | None = None,
        from_start: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log_path = log_path
        self.sessions = sessions
        self.server_id = server_id
        self.bucket_seconds = bucket_seconds
        self.retention_seconds = retention_seconds
        self.flush_seconds = flush_seconds
        self.max_log_bytes = max_log_bytes
        self.reopen = reopen
        self.clock = clock
        self.lines_read = 0
        self.rotations = 0
        self._tail = LogTail(log_path, from_start=from_start)
        self._pending: dict[BucketKey, AppBucket] = {}
        self._lock = threading.Lock()  # the loop and a direct flush() from a test
        self._last_flush = 0.0
        self._last_purge = 0.0
        self._loop = PeriodicLoop("metrics-ingress", self.run_once, READ_SECONDS)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        with contextlib.suppress(Exception):
            self.flush()  # what was counted since the last write is not lost on a clean stop
        self._tail.close()

    def run_once(self) -> None:
        self.read()
        now = self.clock()
        if now - self._last_flush >= self.flush_seconds:
            self.flush()
        if now - self._last_purge >= PURGE_SECONDS:
            self.purge()
        self._rotate_if_large()

    def read(self) -> int:
        """Aggregate the lines nginx appended since the last read; returns how many."""
        with self._lock:
            lines = self._tail.read_lines()
            requests = [r for r in map(parse_line, lines) if r is not None]
            aggregate(requests, self.bucket_seconds, self._pending)
            self.lines_read += len(lines)
            return len(lines)

    def flush(self) -> int:
        """Add the pending counts to the store. On a failure they stay pending for the next
        flush (nothing counted twice: the transaction commits all of them or none)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = self.clock()
            if not pending:
                return 0
            try:
                with self.sessions.begin() as session:
                    return store.add_app_buckets(session, self.server_id, pending)
            except Exception:
                for key, bucket in pending.items():
                    self._pending.setdefault(key, AppBucket()).merge(bucket)
                raise

    def purge(self) -> None:
        self._last_purge = self.clock()
        cutoff = int(self.clock() - self.retention_seconds)
        with self.sessions.begin() as session:
            store.purge_before(session, cutoff)

    def _rotate_if_large(self) -> None:
        if self.reopen is None or self._tail.draining:
            return
        try:
            size = os.stat(self.log_path).st_size
        except FileNotFoundError:
            return
        if size <= self.max_log_bytes:
            return
        # One old file at most: the previous one was read out before this rename replaces it.
        os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        self.rotations += 1
        try:
            self.reopen()
        except Exception:
            log.exception("nginx did not reopen its metrics log; it goes on writing the old one")
