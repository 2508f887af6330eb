"""Ingress nodes: an nginx on every node labelled ``ingress=true``, serving the same routes as
every Berth server's own nginx (the agent on the node, the config it is sent, its token)."""
