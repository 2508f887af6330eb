"""The certificate manager: the planner decides, this acts (orders, and what it keeps).

What it keeps goes to a ``CertStore``: the store's tables in a Berth server
(``berth.certs.store_certs``, shared by every server), or files (``FileCertStore``), whose
layout under ``directory`` is::

    account.key                     the ACME account's key (0600)
    state.json                      every domain's status and the orders of the budget window
    archive/<domain>/<version>/     key.pem (0600) and chain.pem of one issuance or upload
    live/<domain> -> ../archive/... symlink to the version being served

A new certificate is written into a fresh version directory and ``live/<domain>`` is swapped
to it with one rename, so a reader (nginx) always finds a key and a chain that belong
together. Statuses and the order budget are kept in ``state.json``, so a restart neither
forgets a backoff nor resets the budget (the retry storm of dokku-letsencrypt#256 began with
every start retrying every failed domain at once).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from berth.certs.acme_client import Failed, Issued, IssueResult
from berth.certs.model import (
    CertSource,
    CertState,
    CertStatus,
    Clock,
    OrderBudget,
    RetryPolicy,
    record_failure,
    record_issued,
    utc_now,
)
from berth.certs.names import normalize_domain, normalize_pattern
from berth.certs.planner import Plan, covering_wildcard, plan
from berth.certs.validate import CheckedCertificate

_KEEP_VERSIONS = 2


class Issuer(Protocol):
    def obtain(self, domain: str) -> IssueResult: ...


class CertStore(Protocol):
    """Where statuses, the order budget and the certificates themselves are kept: files in
    one directory (``FileCertStore``), or the store's tables, which every Berth server reads
    (``berth.certs.store_certs.SqlCertStore``)."""

    def load(self) -> tuple[list[CertStatus], list[datetime]]: ...

    def save(self, statuses: Iterable[CertStatus], orders: Iterable[datetime]) -> None: ...

    def install(self, name: str, chain_pem: bytes, key_pem: bytes) -> None: ...

    def remove(self, name: str) -> None: ...


def dir_name(name: str) -> str:
    # Names are normalised (a-z0-9.-), so only a wildcard's "*" needs a file-safe spelling.
    return "_wildcard" + name[1:] if name.startswith("*.") else name


def _write_private(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json_atomically(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    _write_private(tmp, json.dumps(data, indent=1, sort_keys=True).encode(), 0o600)
    os.replace(tmp, path)


class FileCertStore:
    """Statuses in ``state.json``, certificates under ``archive/`` with ``live/`` links (the
    layout in this module's docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        (directory / "archive").mkdir(exist_ok=True)
        (directory / "live").mkdir(exist_ok=True)

    @property
    def _state_path(self) -> Path:
        return self.directory / "state.json"

    def load(self) -> tuple[list[CertStatus], list[datetime]]:
        try:
            data = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return [], []
        except (OSError, ValueError):
            # A damaged state file loses backoffs, not certificates: the files stay served.
            return [], []
        statuses = []
        for item in data.get("statuses", []):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                statuses.append(CertStatus.from_json(item))
        placed = []
        for value in data.get("orders", []):
            with contextlib.suppress(TypeError, ValueError):
                placed.append(datetime.fromisoformat(value))
        return statuses, placed

    def save(self, statuses: Iterable[CertStatus], orders: Iterable[datetime]) -> None:
        data = {
            "statuses": [s.to_json() for s in sorted(statuses, key=lambda s: s.domain)],
            "orders": [t.isoformat() for t in orders],
        }
        _write_json_atomically(self._state_path, data)

    def paths(self, name: str) -> tuple[Path, Path]:
        live = self.directory / "live" / dir_name(name)
        return live / "chain.pem", live / "key.pem"

    def install(self, name: str, chain_pem: bytes, key_pem: bytes) -> None:
        folder = dir_name(name)
        archive = self.directory / "archive" / folder
        archive.mkdir(parents=True, exist_ok=True)
        version = archive / str(time.time_ns())
        version.mkdir(mode=0o700)
        _write_private(version / "key.pem", key_pem, 0o600)
        _write_private(version / "chain.pem", chain_pem, 0o644)
        live = self.directory / "live" / folder
        tmp_link = live.with_name(f".{folder}.{time.time_ns()}.tmp")
        os.symlink(os.path.relpath(version, live.parent), tmp_link)
        os.replace(tmp_link, live)  # one rename: readers see the old pair or the new one
        versions = sorted((p for p in archive.iterdir() if p.is_dir()), key=lambda p: p.name)
        for old in versions[:-_KEEP_VERSIONS]:
            shutil.rmtree(old, ignore_errors=True)

    def remove(self, name: str) -> None:
        live = self.directory / "live" / dir_name(name)
        with contextlib.suppress(FileNotFoundError):
            live.unlink()
        shutil.rmtree(self.directory / "archive" / dir_name(name), ignore_errors=True)


class CertManager:
    def __init__(
        self,
        issuer: Issuer,
        directory: Path,
        *,
        store: CertStore | None = None,
        clock: Clock = utc_now,
        policy: RetryPolicy | None = None,
        orders_per_window: int = 50,
        window: timedelta = timedelta(hours=1),
        concurrency: int = 4,
    ) -> None:
        self.issuer = issuer
        self.directory = directory
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self._lock = threading.Lock()
        self._statuses: dict[str, CertStatus] = {}
        self._budget = OrderBudget(limit=orders_per_window, window=window)
        self.files = FileCertStore(directory)
        self.store: CertStore = store if store is not None else self.files
        self._load()

    # --- state ----------------------------------------------------------------------------

    def _load(self) -> None:
        """The statuses as the store has them now (another server may have uploaded or
        forgotten one since): read again at every pass."""
        statuses, placed = self.store.load()
        self._statuses = {status.domain: status for status in statuses}
        self._budget = OrderBudget(
            limit=self._budget.limit, window=self._budget.window, placed=tuple(placed)
        )

    def _save(self) -> None:
        self.store.save(self._statuses.values(), self._budget.placed)

    def reload(self) -> None:
        with self._lock:
            self._load()

    def statuses(self) -> dict[str, CertStatus]:
        with self._lock:
            return dict(self._statuses)

    def status(self, domain: str) -> CertStatus:
        name = normalize_pattern(domain)
        with self._lock:
            return self._statuses.get(name, CertStatus(domain=name))

    def paths(self, domain: str) -> tuple[Path, Path]:
        """(chain.pem, key.pem) of ``domain``'s own certificate, through ``live/`` (the file
        store's layout)."""
        return self.files.paths(normalize_pattern(domain))

    def serving(self, domain: str) -> tuple[Path, Path] | None:
        """The pair the ingress should serve for ``domain``: its own valid certificate, else a
        valid uploaded wildcard that covers it, else None (plain HTTP until one is issued)."""
        name = normalize_domain(domain)
        now = self.clock()
        with self._lock:
            own = self._statuses.get(name)
            if (
                own is not None
                and own.state is CertState.ISSUED
                and own.not_after is not None
                and own.not_after > now
            ):
                return self.paths(name)
            wildcard = covering_wildcard(name, self._statuses, now)
        return self.paths(wildcard.domain) if wildcard is not None else None

    # --- decisions and actions ------------------------------------------------------------

    def plan(self, wanted: Iterable[str]) -> Plan:
        names = [normalize_domain(d) for d in wanted]
        with self._lock:
            return plan(names, self._statuses, self._budget, self.clock())

    def reconcile(self, wanted: Iterable[str]) -> dict[str, CertStatus]:
        """One pass: order what the plan says (at most ``concurrency`` at once), install what
        is issued, record what failed; every wanted domain's status."""
        names = list(dict.fromkeys(normalize_domain(d) for d in wanted))
        now = self.clock()
        with self._lock:
            self._load()
            decided = plan(names, self._statuses, self._budget, now)
            to_order = decided.to_order
            self._budget = self._budget.spend([now] * len(to_order), now)
            for name in names:
                self._statuses.setdefault(name, CertStatus(domain=name))
            self._save()
        if to_order:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                results = list(pool.map(self._obtain_safely, to_order))
            with self._lock:
                for result in results:
                    self._apply(result)
                self._save()
        with self._lock:
            return {name: self._statuses[name] for name in names}

    def _obtain_safely(self, domain: str) -> IssueResult:
        try:
            return self.issuer.obtain(domain)
        except Exception as exc:
            # One domain's bug must not cost the other domains of the pass their certificates;
            # it is recorded and backed off like any failure.
            return Failed(domain, f"internal error: {type(exc).__name__}", "berth:internal")

    def _apply(self, result: IssueResult) -> None:
        now = self.clock()
        current = self._statuses.get(result.domain, CertStatus(domain=result.domain))
        if isinstance(result, Issued):
            self._install(result.domain, result.chain_pem, result.key_pem)
            self._statuses[result.domain] = record_issued(
                current,
                not_before=result.not_before,
                not_after=result.not_after,
                source=CertSource.ACME,
            )
            return
        retry_after = (
            now + timedelta(seconds=result.retry_after) if result.retry_after is not None else None
        )
        self._statuses[result.domain] = record_failure(
            current,
            reason=result.reason,
            problem=result.problem,
            now=now,
            policy=self.policy,
            retry_after=retry_after,
        )

    def install_upload(self, checked: CheckedCertificate) -> CertStatus:
        """Serve a tenant's validated certificate; Berth stops ordering for that domain."""
        with self._lock:
            self._install(checked.domain, checked.chain_pem, checked.key_pem)
            status = record_issued(
                CertStatus(domain=checked.domain),
                not_before=checked.not_before,
                not_after=checked.not_after,
                source=CertSource.UPLOAD,
            )
            self._statuses[checked.domain] = status
            self._save()
            return status

    def forget(self, domain: str) -> None:
        """Stop managing ``domain`` (a removed upload goes back to ACME on the next pass)."""
        name = normalize_pattern(domain)
        with self._lock:
            self._statuses.pop(name, None)
            self.store.remove(name)
            self._save()

    # --- files ----------------------------------------------------------------------------

    def _install(self, domain: str, chain_pem: bytes, key_pem: bytes) -> None:
        self.store.install(domain, chain_pem, key_pem)

    def record(self, status: CertStatus) -> None:
        """Put a status as known (the store will own this next session; tests seed with it)."""
        with self._lock:
            self._statuses[status.domain] = status
            self._save()


__all__ = ["CertManager", "CertState", "CertStatus", "Issuer"]
