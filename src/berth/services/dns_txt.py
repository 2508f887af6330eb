"""TXT lookups with dnspython, against the resolver the operator configured.

``settings.dns_resolver`` is ``host:port`` (``[v6]:port`` for IPv6), or empty for the system's
resolvers (/etc/resolv.conf). Every lookup has a short total timeout, never searches
domains, and always asks for the absolute name.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.name
import dns.resolver

from berth.errors import BerthError
from berth.services.domains import TxtLookupError

DEFAULT_TIMEOUT_SECONDS = 3.0
MAX_TXT_RECORDS = 50  # what a proof needs to read is one record; the rest is noise


class ResolverMisconfigured(BerthError):
    """``dns_resolver`` is not ``host:port``: the operator must fix the setting."""

    status = 503
    code = "dns_resolver_misconfigured"


def parse_server(text: str) -> tuple[str, int]:
    """``host:port`` (an IP address, not a name: no lookup to find the lookup server)."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        port = 0
    if not sep or not 0 < port < 65536:
        raise ResolverMisconfigured(
            f"the server's dns_resolver setting {text[:60]!r} is not an address:port like "
            "127.0.0.1:53; ask the operator to fix it"
        )
    return host, port


class DnsTxtResolver:
    """A :class:`berth.services.domains.TxtResolver` on dnspython."""

    def __init__(self, server: str = "", timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        if server:
            host, port = parse_server(server)
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        else:
            self._resolver = dns.resolver.Resolver()
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout

    def txt_records(self, name: str) -> list[str]:
        try:
            qname = dns.name.from_text(name)
            answer = self._resolver.resolve(qname, "TXT", lifetime=self.timeout, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise TxtLookupError(f"{name} does not exist in DNS (NXDOMAIN)") from exc
        except dns.resolver.NoAnswer as exc:
            raise TxtLookupError(f"{name} exists but has no TXT record") from exc
        except dns.exception.Timeout as exc:
            raise TxtLookupError(
                f"the DNS resolver gave no answer for {name} within {self.timeout:g} s"
            ) from exc
        except dns.resolver.NoNameservers as exc:
            raise TxtLookupError(f"the DNS servers failed to answer for {name}") from exc
        except dns.exception.DNSException as exc:
            raise TxtLookupError(f"the DNS lookup of {name} failed: {type(exc).__name__}") from exc
        records: list[str] = []
        for rdata in list(answer)[:MAX_TXT_RECORDS]:
            strings = getattr(rdata, "strings", ())
            records.append(b"".join(strings).decode("utf-8", "replace"))
        return records
