"""Keep nginx in step with the store without reloading it for every change.

Anything that changes routing calls ``request_sync()``, which only marks the proxy dirty.
A background thread waits ``coalesce_seconds`` after the first request so that a burst
(a deploy replacing 50 instances) becomes one snapshot and one reload. The thread builds the
snapshot itself at that moment, so it always applies the latest state, never a stale one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from berth.errors import ProxyConfigError
from berth.proxy.model import ProxyConfig

log = logging.getLogger(__name__)


class ProxyApplier(Protocol):
    """What the syncer needs from ``NginxManager`` (fakes implement it in unit tests)."""

    def apply(self, cfg: ProxyConfig) -> bool: ...

    def wait_for_generation(self, generation: int, timeout: float = ...) -> bool: ...


class ProxySyncer:
    """Coalesces sync requests and applies the latest ``build_config()`` snapshot."""

    def __init__(
        self,
        manager: ProxyApplier,
        build_config: Callable[[], ProxyConfig],
        coalesce_seconds: float = 0.2,
        *,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.manager = manager
        self.build_config = build_config
        self.coalesce_seconds = coalesce_seconds
        self.retry_initial_seconds = retry_initial_seconds
        self.retry_max_seconds = retry_max_seconds
        # Usually a ProxyConfigError; any other failure of build_config/apply lands here
        # too, because the thread must survive it. Cleared by the next successful sync.
        self.last_error: Exception | None = None
        self.last_generation: int | None = None
        self.last_synced_at: float | None = None
        self.sync_count = 0  # successful build+apply rounds, reload or not
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._failures = 0
        # Held for build+apply so the thread and sync_now never interleave.
        self._apply_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="berth-proxy-sync", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread. A pending request is dropped: nginx keeps its last config, and
        the next start syncs from the store anyway."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # -- requests --------------------------------------------------------------------------

    def request_sync(self) -> None:
        """Mark the proxy dirty and wake the thread. Cheap; safe from any thread."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def sync_now(self, timeout: float = 10.0) -> int:
        """Build and apply a snapshot now, then wait until nginx serves it. Returns its
        generation. Raises ``ProxyConfigError`` if nginx rejects it, ``TimeoutError`` if it
        is not live within ``timeout``."""
        with self._cond:
            # This sync covers every request made so far.
            self._dirty = False
        with self._apply_lock:
            cfg = self._build_and_apply()
            if not self.manager.wait_for_generation(cfg.generation, timeout):
                raise TimeoutError(f"proxy generation {cfg.generation} not live after {timeout}s")
            return cfg.generation

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while self._wait_for_work():
            self._sync_in_background()

    def _wait_for_work(self) -> bool:
        """Block until a sync is requested or a retry is due, then let the burst gather.
        Returns False when stopping."""
        with self._cond:
            while not self._stopping:
                self._wait_for_request_or_retry()
                if self._stopping:
                    break
                # Gather the rest of the burst; stop() still interrupts the wait.
                self._cond.wait_for(lambda: self._stopping, self.coalesce_seconds)
                # A sync_now during the wait may already have covered this request.
                if not self._stopping and (self._dirty or self._failures):
                    self._dirty = False
                    return True
            return False

    def _wait_for_request_or_retry(self) -> None:
        """Caller holds ``_cond``."""
        while not (self._dirty or self._stopping):
            # Recomputed on every wake-up: a sync_now may have failed or succeeded.
            delay = self._retry_delay()
            if not self._cond.wait(delay) and delay is not None:
                return  # the retry is due

    def _retry_delay(self) -> float | None:
        if self._failures == 0:
            return None
        delay: float = self.retry_initial_seconds * 2.0 ** (self._failures - 1)
        return min(delay, self.retry_max_seconds)

    def _sync_in_background(self) -> None:
        with self._apply_lock:
            try:
                self._build_and_apply()
            except Exception:
                # Reported through last_error; a failing sync must not kill the thread.
                log.exception("proxy sync failed; retrying in %.1fs", self._retry_delay())

    def _build_and_apply(self) -> ProxyConfig:
        """Caller holds ``_apply_lock``. Records the outcome for status reporting."""
        try:
            cfg = self.build_config()
            self.manager.apply(cfg)
        except Exception as exc:
            self.last_error = exc
            self._set_failures(self._failures + 1)
            raise
        self.sync_count += 1
        self.last_error = None
        self.last_generation = cfg.generation
        self.last_synced_at = time.time()
        self._set_failures(0)
        return cfg

    def _set_failures(self, failures: int) -> None:
        with self._cond:
            self._failures = failures
            # Wake the thread so it re-plans its retry timer.
            self._cond.notify_all()

    @property
    def last_config_error(self) -> ProxyConfigError | None:
        """``last_error`` when nginx rejected the config (as opposed to any other failure)."""
        return self.last_error if isinstance(self.last_error, ProxyConfigError) else None
