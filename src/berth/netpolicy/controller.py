"""Keep this installation's egress chains equal to what its networks and plans ask for.

``sync()`` observes (the engine's managed networks, the tenants without internet), plans (pure
``render``) and applies only when the text changed or a jump is missing. It runs at start, on a
slow period (repairs after a dockerd restart or someone flushing the table) and from
``ensure_filtered()``, which the reconciler and the builder call after creating a network and
before running anything on it, so no container ever runs on an unfiltered bridge.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from berth.netpolicy.iptables import Firewall
from berth.netpolicy.plan import (
    BridgeNetwork,
    DatabaseEndpoint,
    EgressSnapshot,
    NetPolicyError,
    render,
)
from berth.periodic import PeriodicLoop

log = logging.getLogger(__name__)

SYNC_INTERVAL_SECONDS = 10.0


class NetworkSource(Protocol):
    def managed(self) -> list[BridgeNetwork]:
        """The installation's bridge networks that can be filtered."""

    def network_id(self, name: str) -> str | None:
        """The id of the network called ``name``; None when there is none."""


class Watcher(Protocol):
    """Calls back when a network appears (berth.netpolicy.events); optional."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EgressController:
    def __init__(
        self,
        installation: str,
        networks: NetworkSource,
        internet_off: Callable[[], frozenset[str]],
        firewall: Firewall,
        blocked: tuple[ipaddress.IPv4Network, ...] = (),
        interval: float = SYNC_INTERVAL_SECONDS,
        databases: Callable[[], tuple[DatabaseEndpoint, ...]] = tuple,
    ) -> None:
        self.installation = installation
        self._networks = networks
        self._internet_off = internet_off
        self._firewall = firewall
        self._blocked = blocked
        self._databases = databases
        self._lock = threading.Lock()
        self._applied: str | None = None
        self._filtered_ids: frozenset[str] = frozenset()
        self._loop = PeriodicLoop("berth-egress", self.sync, interval)
        self._watcher: Watcher | None = None

    def set_watcher(self, watcher: Watcher) -> None:
        """Started and stopped with the controller; it usually calls ``sync``."""
        self._watcher = watcher

    @property
    def last_error(self) -> str:
        return self._loop.last_error

    def sync(self) -> bool:
        """Bring the chains up to date; True when rules were written."""
        with self._lock:
            networks = sorted(self._networks.managed())
            snapshot = EgressSnapshot(
                installation=self.installation,
                networks=tuple(networks),
                internet_off=self._internet_off(),
                blocked=self._blocked,
                databases=self._databases(),
            )
            text = render(snapshot)
            changed = text != self._applied or not self._firewall.jumps_present()
            if changed:
                # Chains first: a jump to a chain that does not exist yet would be refused.
                self._firewall.apply(text)
                self._firewall.ensure_jumps()
                self._applied = text
                log.info("egress filter: rules for %d networks applied", len(networks))
            self._filtered_ids = frozenset(n.id for n in networks if n.id)
            return changed

    def ensure_filtered(self, network_name: str) -> None:
        """Return only once the network's bridge is in the applied rules; raise otherwise."""
        network_id = self._networks.network_id(network_name)
        if network_id is None:
            raise NetPolicyError(f"network {network_name!r} does not exist")
        if network_id in self._filtered_ids:
            return
        self.sync()
        if network_id not in self._filtered_ids:
            raise NetPolicyError(
                f"network {network_name!r} cannot be egress-filtered; refusing to run on it"
            )

    def start(self) -> None:
        """Sync once now (a failure is logged, the loop retries), then every interval."""
        try:
            self.sync()
        except Exception as exc:  # e.g. the engine is still down: the loop keeps retrying
            log.error("egress filter: first sync failed: %s", exc)
        self._loop.start()
        if self._watcher is not None:
            self._watcher.start()

    def wake(self) -> None:
        """Sync soon (e.g. after a tenant's plan changed), without waiting for the period."""
        self._loop.wake()

    def stop(self) -> None:
        """Stop syncing; the rules stay in place with the containers (the data plane)."""
        if self._watcher is not None:
            self._watcher.stop()
        self._loop.stop()

    def remove(self) -> None:
        with self._lock:
            self._firewall.remove()
            self._applied = None
            self._filtered_ids = frozenset()
