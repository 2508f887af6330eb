"""The platform registry: where builds are pushed for every node to pull, pinned by digest.

- :mod:`berth.registry.config` renders its config (pure);
- :mod:`berth.registry.server` runs and supervises the distro's ``docker-registry``;
- :mod:`berth.registry.push` pushes an image and returns ``ADDR/t-<tenant>/<app>@sha256:...``;
- :mod:`berth.registry.gc` deletes what no release keeps, in the registry and on the nodes.

Who may reach it: Berth and the nodes' engines only, so it has no authentication. On one
machine it listens on loopback (127.0.0.1:5000): a container's 127.0.0.1 is its own, and
packets to the host's loopback from a bridge are martians the kernel drops (route_localnet
is 0), so no tenant container can reach it; tests/integration/test_registry_real.py proves it.
On a swarm it must listen on an address the nodes reach: the egress filter (berth.netpolicy)
rejects every new connection from a tenant bridge to the host itself (INPUT) and to the
operator's blocked ranges (put the registry's address in BERTH_EGRESS_BLOCKED_RANGES for
tenant containers on other nodes).
"""
