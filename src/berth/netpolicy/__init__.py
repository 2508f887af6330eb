"""Egress filtering for tenant containers and build steps (iptables chains per installation).

``plan`` renders the rules from a snapshot (pure), ``iptables`` applies them, ``observe`` reads
the engine's networks and the tenants' plans, ``controller`` ties them together.

On a Swarm, ``node_guard`` (pure) and ``node_guard_apply`` are each node's own firewall that
keeps tenants apart across nodes (``python -m berth.netpolicy.node_guard``). Berth runs it on
every node itself, as the global service ``berth-node-guard`` (berth.swarm.guard_service, kept
current by berth.controllers.node_guard_sync).
"""
