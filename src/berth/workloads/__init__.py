"""Where apps run: the workload seam (protocol) and its backends (local, swarm)."""
