"""The ACME pass (leader only): every wanted hostname gets a certificate, renewed before expiry.

Each pass reads the wanted hostnames from the store (platform hostnames, verified custom
domains) and hands them to the certificate manager, whose pure planner decides what is ordered
now, under the account's order budget and each domain's backoff. It runs every
``acme_interval_seconds`` and at once when a domain is verified or an app is created (``wake``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from berth.certs.model import CertState
from berth.periodic import LoopOwner, PeriodicLoop
from berth.services.certificates import Certificates, claimed_hostnames, wanted_hostnames
from berth.settings import Settings

log = logging.getLogger(__name__)


class AcmePass(LoopOwner):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        certificates: Certificates,
        *,
        interval: float | None = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sessions, self.settings, self.certificates = sessions, settings, certificates
        self.may_act = may_act
        self._lock = threading.Lock()  # one pass at a time (the loop, or a direct call)
        self._logged: dict[str, int] = {}  # domain -> failures last logged (once per failure)
        self._loop = PeriodicLoop(
            "acme",
            self.run_once,
            interval if interval is not None else settings.acme_interval_seconds,
        )

    def run_once(self) -> dict[str, str]:
        """One pass; each wanted hostname's state afterwards."""
        if not self.may_act():
            return {}
        with self._lock:
            with self.sessions() as session:
                wanted = wanted_hostnames(session, self.settings.base_domain)
                claimed = claimed_hostnames(session, self.settings.base_domain)
            self.certificates.forget_unknown(claimed)
            statuses = self.certificates.reconcile(wanted)
            self.certificates.share_account_key()  # made by the first order, if it was
        failed = [s for s in statuses.values() if s.state is CertState.FAILED]
        self._logged = {s.domain: self._logged.get(s.domain, 0) for s in failed}
        for status in failed:
            if self._logged[status.domain] == status.failures:
                continue
            self._logged[status.domain] = status.failures
            log.warning(
                "certificate for %s failed (%d in a row, next try %s): %s",
                status.domain,
                status.failures,
                status.next_retry.isoformat() if status.next_retry else "-",
                status.reason,
            )
        return {name: status.state.value for name, status in statuses.items()}
