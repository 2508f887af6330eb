"""Per-app metrics: requests, status classes, bytes and latency from Berth's nginx, and CPU,
memory and restarts per instance from the engine's cgroup files.

``access_log`` and ``ingress_collector`` tail nginx's compact metrics log; ``cgroups`` and
``engine_collector`` read the containers' cgroup counters in one pass; ``store`` keeps per-app
and per-instance buckets (one row per server, summed on read); ``series`` and ``prometheus``
shape them for the API. ``histogram`` and ``series`` are pure.
"""
