"""Berth on many machines: the Swarm's nodes, and making this machine a Swarm manager.

- ``views``: pure rows (``berth nodes list/info``) from Docker's node and task JSON.
- ``labels``: pure rules for node labels (``zone`` and ``ingress`` are Berth's own).
- ``nodes``: node operations over a manager's API (docker-py's low-level ``APIClient``).
- ``init``: ``berth cluster init`` (swarm init, safe twice) and the backend the store records.
"""
