#!/usr/bin/env bash
# The whole pytest suite in two streams at once: the multi-node tier (tests/cluster: namespaced
# engines of its own, mostly waiting on Swarm) beside everything else (the host's engine), then
# the store and API tests again on PostgreSQL. Every stream must pass; both logs are printed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/pytest -q -p no:cacheprovider)
cluster_log="$(mktemp /tmp/berth-cluster-tier.XXXXXX)"
started=$(date +%s)
"${PYTEST[@]}" tests/cluster > "$cluster_log" 2>&1 &
cluster_pid=$!
trap 'kill -TERM "$cluster_pid" 2>/dev/null; wait "$cluster_pid" 2>/dev/null' INT TERM
"${PYTEST[@]}" tests --ignore=tests/cluster
rest=$?
wait "$cluster_pid"
cluster=$?
trap - INT TERM
echo "=============================== the multi-node tier (tests/cluster) ==============================="
cat "$cluster_log"
rm -f "$cluster_log"
echo "pytest: everything else rc=$rest, multi-node tier rc=$cluster, $(( $(date +%s) - started )) s"
make --no-print-directory test-postgres
postgres=$?
[ "$rest" -eq 0 ] && [ "$cluster" -eq 0 ] && [ "$postgres" -eq 0 ]
