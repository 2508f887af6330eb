"""The platform registry: where builds are pushed for every node to pull, pinned by digest.

- :mod:`berth.registry.config` renders its config (pure);
- :mod:`berth.registry.server` runs and supervises the distro's ``docker-registry``;
- :mod:`berth.registry.push` pushes an image and returns ``ADDR/t-<tenant>/<app>@sha256:...``;
- :mod:`berth.registry.gc` deletes what no release keeps, in the registry and on the nodes.

Who may reach it. On one machine it listens on loopback (127.0.0.1:5000) without credentials:
a container's 127.0.0.1 is its own, and packets from a bridge to the host's loopback are
martians the kernel drops (route_localnet is 0), so no tenant container can reach it;
tests/integration/test_registry_real.py proves it from a tenant-like bridge, against every
address of the host. On a swarm it must listen on an address the nodes reach, which tenants'
containers on those nodes could reach too (through their node's NAT, with the node's own
source address, so no firewall on this host can tell them apart). There it takes credentials
(htpasswd, an account Berth generates; ``registry_auth = "auto"``) and should serve TLS
(``registry_tls_cert``/``_key``; each engine trusts it through
``/etc/docker/certs.d/ADDR/ca.crt``), and each node's egress filter should refuse it to tenant
bridges (its address in BERTH_EGRESS_BLOCKED_RANGES), so that it is neither reachable nor open.
"""
