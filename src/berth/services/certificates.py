"""HTTPS certificates of an installation: what is wanted, what is served, uploads.

``Certificates`` owns the ``CertManager`` (files and statuses under ``home/certs``) and keeps a
map of what nginx should serve for each hostname, rebuilt only when a certificate changes, so
a routing pass looks hostnames up instead of reading files. The ACME pass
(``berth.controllers.certificates``) orders what the planner says; the API uploads and removes
a tenant's own certificates here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.certs.acme_client import Failed, IssueResult
from berth.certs.manager import CertManager, Issuer, dir_name
from berth.certs.model import CertSource, CertState, CertStatus, utc_now
from berth.certs.names import normalize_pattern, pattern_covers
from berth.certs.store_certs import SqlCertStore
from berth.certs.validate import validate_upload
from berth.errors import NotFound
from berth.proxy.model import Route, ServedCertificate, TlsConfig
from berth.settings import Settings
from berth.store.tables import App, Domain

log = logging.getLogger(__name__)

Pair = tuple[Path, Path]  # (chain.pem, key.pem) of one issued version

REFRESH_SECONDS = 60.0  # at least this often the served map is rebuilt (expiries)
_KEEP_VERSIONS = 2  # the live config's pair and the one before, while a reload is in flight
_VERSION = re.compile(r"[0-9a-z]{1,32}")

# Names no public CA issues for (RFC 6761): never ordered, so a default install's
# *.berth.localhost does not spend the account's order budget on refusals.
_NEVER_PUBLIC = (".localhost", ".local", ".internal", ".invalid")


@dataclass(frozen=True)
class CertView:
    """One hostname's certificate as a tenant sees it."""

    domain: str
    state: str  # pending | issued | failed | off
    source: str  # acme | upload | wildcard
    not_after: datetime | None = None
    reason: str | None = None
    next_retry: datetime | None = None

    def to_json(self) -> dict[str, object]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "domain": self.domain,
            "state": self.state,
            "source": self.source,
            "not_after": iso(self.not_after),
            "reason": self.reason,
            "next_retry": iso(self.next_retry),
        }


def orderable(hostname: str) -> bool:
    return not hostname.endswith(_NEVER_PUBLIC)


def claimed_hostnames(session: Session, base_domain: str) -> set[str]:
    """Every hostname an app claims: platform hostnames and custom domains, pending or not."""
    names = {f"{name}.{base_domain}" for name in session.scalars(select(App.name))}
    names.update(session.scalars(select(Domain.hostname)))
    return names


def wanted_hostnames(session: Session, base_domain: str) -> list[str]:
    """Every app's platform hostname and every verified custom domain (what HTTPS should
    cover), apps being deleted left out."""
    names = [
        f"{name}.{base_domain}"
        for name in session.scalars(select(App.name).where(App.deleting_at.is_(None)))
    ]
    names += session.scalars(
        select(Domain.hostname)
        .join(App, App.id == Domain.app_id)
        .where(Domain.verified_at.is_not(None), App.deleting_at.is_(None))
    )
    return sorted(set(names))


class Certificates:
    """``sessions`` given: statuses and pairs in the store (every server the same); else in
    files under ``directory`` (one process, the unit tests)."""

    def __init__(
        self,
        settings: Settings,
        issuer: Issuer | None,
        *,
        sessions: sessionmaker[Session] | None = None,
        directory: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.acme_on = issuer is not None
        directory = directory or settings.home / "certs"
        self.store = SqlCertStore(sessions) if sessions is not None else None
        self.manager = CertManager(
            issuer if issuer is not None else _NoIssuer(),
            directory,
            store=self.store,
            clock=clock,
            orders_per_window=settings.acme_orders_per_hour,
        )
        # Each server's own copy of the pairs it serves, one directory per issued version.
        self.served_dir = directory / "served"
        self.served_dir.mkdir(mode=0o700, exist_ok=True)
        self.clock = clock
        self.version = 0  # grows whenever what nginx should serve changes
        self._store_version = -1
        self._refreshed_at = 0.0
        self._lock = threading.Lock()
        self._own: dict[str, Pair] = {}
        self._wildcards: tuple[tuple[str, Pair], ...] = ()
        self.on_change: Callable[[], None] = lambda: None
        self.refresh()

    def share_account_key(self) -> None:
        """One ACME account for the installation: the key in the store is written to this
        server's account key file, or this server's key is put in the store."""
        if self.store is None:
            return
        path = self.manager.directory / "account.key"
        stored = self.store.account_key()
        if stored is not None:
            if not path.exists() or path.read_text() != stored:
                tmp = path.with_name(f".account.key.{os.getpid()}.tmp")
                tmp.unlink(missing_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(stored)
                os.replace(tmp, path)
        elif path.exists():
            self.store.keep_account_key(path.read_text())

    # -- what nginx serves -------------------------------------------------------------------

    def refresh_if_changed(self) -> int:
        """Refresh when the store says something changed (one small read), or a minute has
        passed (expiries); the version afterwards. Cheap enough for every routing pass."""
        stored = self.store.version() if self.store is not None else 0
        now = time.monotonic()
        if stored != self._store_version or now - self._refreshed_at >= REFRESH_SECONDS:
            self.refresh()
            self._store_version, self._refreshed_at = stored, now
        return self.version

    def refresh(self) -> bool:
        """Rebuild the served map from the statuses and pairs; True when it changed."""
        self.manager.reload()
        now = self.clock()
        material = self.store.material() if self.store is not None else self._file_material()
        own: dict[str, Pair] = {}
        wildcards: list[tuple[str, Pair]] = []
        for name, status in self.manager.statuses().items():
            if status.state is not CertState.ISSUED or status.not_after is None:
                continue
            if status.not_after <= now or name not in material:
                continue
            pair = self._materialized(name, *material[name])
            if pair is None:
                continue
            if name.startswith("*."):
                wildcards.append((name, pair))
            else:
                own[name] = pair
        with self._lock:
            changed = own != self._own or tuple(sorted(wildcards)) != self._wildcards
            if changed:
                self._own, self._wildcards = own, tuple(sorted(wildcards))
                self.version += 1
        if changed:
            self.on_change()
        return changed

    def _file_material(self) -> dict[str, tuple[str, bytes, bytes]]:
        found = {}
        for name in self.manager.statuses():
            chain, key = self.manager.paths(name)
            try:
                version = Path(os.path.realpath(chain.parent, strict=True)).name
                found[name] = (version, chain.read_bytes(), key.read_bytes())
            except OSError:
                continue
        return found

    def _materialized(self, name: str, version: str, chain: bytes, key: bytes) -> Pair | None:
        """This server's files of ``name``'s pair at ``version`` (written once, atomically:
        a directory renamed into place), older versions but the last two removed."""
        if not _VERSION.fullmatch(version):
            log.error("certificate %s has a malformed version %r: not served", name, version)
            return None
        home = self.served_dir / dir_name(name)
        home.mkdir(mode=0o700, exist_ok=True)
        target = home / version
        if not (target / "key.pem").is_file():
            tmp = home / f".{version}.{os.getpid()}.{threading.get_ident()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o700)
            (tmp / "chain.pem").write_bytes(chain)
            key_path = tmp / "key.pem"
            key_path.touch(mode=0o600)
            key_path.write_bytes(key)
            try:
                os.rename(tmp, target)
            except OSError:  # another thread put the same version there first
                shutil.rmtree(tmp, ignore_errors=True)
        versions = sorted(
            (p for p in home.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in versions[:-_KEEP_VERSIONS]:
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target / "chain.pem", target / "key.pem"

    def pair_for(self, hostname: str) -> Pair | None:
        with self._lock:
            pair = self._own.get(hostname)
            if pair is not None:
                return pair
            for pattern, wild in self._wildcards:
                if pattern_covers(pattern, hostname):
                    return wild
        return None

    def tls_config(self, routes: Iterable[Route]) -> TlsConfig | None:
        """HTTPS for the routes' hostnames that have a certificate; None while none has (no
        HTTPS listener at all, so an install without certificates binds no port 443)."""
        port = self.settings.https_port
        if port == 0:
            return None
        by_pair: dict[Pair, list[str]] = {}
        redirect: set[str] = set()
        for route in routes:
            if route.controls is None or route.controls.https_redirect:
                redirect.add(route.app_id)
            for hostname in route.hostnames:
                pair = self.pair_for(hostname)
                if pair is not None:
                    by_pair.setdefault(pair, []).append(hostname)
        if not by_pair:
            return None
        served = tuple(
            ServedCertificate(tuple(sorted(hosts)), chain, key)
            for (chain, key), hosts in sorted(by_pair.items())
        )
        return TlsConfig(port=port, certificates=served, redirect_apps=frozenset(redirect))

    # -- statuses ----------------------------------------------------------------------------

    def view(self, hostname: str) -> CertView:
        """What a tenant is told about ``hostname``'s certificate."""
        status = self.manager.status(hostname)
        if status.state is CertState.ISSUED and status.not_after is not None:
            return CertView(hostname, "issued", status.source.value, status.not_after)
        with self._lock:
            covering = [p for p, _ in self._wildcards if pattern_covers(p, hostname)]
        if covering:
            wildcard = self.manager.status(covering[0])
            return CertView(hostname, "issued", "wildcard", wildcard.not_after)
        if status.state is CertState.FAILED:
            return CertView(hostname, "failed", "acme", None, status.reason, status.next_retry)
        if not self.acme_on:
            return CertView(
                hostname, "off", "acme", reason="no ACME CA is configured "
                "(BERTH_ACME_DIRECTORY_URL): upload a certificate with berth certs add",
            )  # fmt: skip
        if not orderable(hostname):
            return CertView(
                hostname, "off", "acme", reason="a name no public CA issues for "
                "(.localhost and the like): upload a certificate with berth certs add",
            )  # fmt: skip
        return CertView(hostname, "pending", "acme", reason="waiting for the next ACME pass")

    # -- uploads -------------------------------------------------------------------------------

    def upload(self, domain: str, cert_pem: str, key_pem: str) -> CertStatus:
        """Serve a tenant's (or the operator's wildcard) certificate once it is checked: the
        key matches, it covers the domain, it is valid now. Refused: nothing changes."""
        checked = validate_upload(cert_pem, key_pem, domain, self.clock())
        status = self.manager.install_upload(checked)
        self.refresh()
        return status

    def remove_upload(self, domain: str) -> None:
        name = normalize_pattern(domain)
        status = self.manager.statuses().get(name)
        if status is None or status.source is not CertSource.UPLOAD:
            raise NotFound(f"no uploaded certificate for {name}", code="certificate_not_found")
        self.manager.forget(name)
        self.refresh()

    def forget(self, hostnames: Iterable[str]) -> None:
        """A hostname left its app (domain removed, app deleted): its certificate, issued or
        uploaded, is never served for whoever claims the name next."""
        known = self.manager.statuses()
        gone = [h for h in hostnames if normalize_pattern(h) in known]
        for hostname in gone:
            self.manager.forget(hostname)
        if gone:
            self.refresh()

    def forget_unknown(self, known: Iterable[str]) -> None:
        """Forget every certificate of a hostname no app claims any more (wildcards stay)."""
        keep = set(known)
        self.forget(n for n in self.manager.statuses() if not n.startswith("*.") and n not in keep)

    def reconcile(self, wanted: Iterable[str]) -> dict[str, CertStatus]:
        """One ACME pass over the wanted hostnames (the planner decides what is ordered)."""
        names = [h for h in wanted if orderable(h)]
        statuses = self.manager.reconcile(names) if self.acme_on else {}
        self.refresh()
        return statuses


class _NoIssuer:
    """Without an ACME CA nothing is ordered (``reconcile`` does not ask); uploads work."""

    def obtain(self, domain: str) -> IssueResult:
        return Failed(domain, "no ACME CA is configured", "berth:acme-off")
