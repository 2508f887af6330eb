"""Egress filtering for tenant containers and build steps (iptables chains per installation).

``plan`` renders the rules from a snapshot (pure), ``iptables`` applies them, ``observe`` reads
the engine's networks and the tenants' plans, ``controller`` ties them together.
"""
