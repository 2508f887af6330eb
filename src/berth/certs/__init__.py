"""Certificates for the edge: ACME issuance (HTTP-01), uploaded certificates, renewal, backoff.

``model`` and ``planner`` decide (pure, driven by a clock passed in); ``validate`` checks an
uploaded certificate; ``acme_client`` talks to a CA; ``manager`` acts on the planner's decisions
and writes key + chain to disk; ``challenge_server`` answers HTTP-01 where no ingress does yet.
"""
