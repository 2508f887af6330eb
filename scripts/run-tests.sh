#!/usr/bin/env bash
# The whole pytest suite in two streams at once: the multi-node tier (tests/cluster: namespaced
# engines of its own, mostly waiting on Swarm), followed in the same stream by the store and API
# tests again on PostgreSQL, beside everything else (the host's engine), which is the longest.
# Every stream must pass; every log is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/pytest -q -p no:cacheprovider)
cluster_log="$(mktemp /tmp/berth-cluster-tier.XXXXXX)"
postgres_log="$(mktemp /tmp/berth-postgres-tier.XXXXXX)"
rcs="$(mktemp -d /tmp/berth-tier-rc.XXXXXX)"
started=$(date +%s)
(
  "${PYTEST[@]}" tests/cluster > "$cluster_log" 2>&1
  echo $? > "$rcs/cluster"
  echo "multi-node tier done after $(( $(date +%s) - started )) s" >> "$cluster_log"
  make --no-print-directory test-postgres > "$postgres_log" 2>&1
  echo $? > "$rcs/postgres"
) &
side_pid=$!
trap 'kill -TERM "$side_pid" 2>/dev/null; wait "$side_pid" 2>/dev/null' INT TERM
"${PYTEST[@]}" tests --ignore=tests/cluster
rest=$?
wait "$side_pid"
trap - INT TERM
cluster=$(cat "$rcs/cluster" 2>/dev/null || echo 1)
postgres=$(cat "$rcs/postgres" 2>/dev/null || echo 1)
echo "=============================== the multi-node tier (tests/cluster) ==============================="
cat "$cluster_log"
echo "=============================== the store and API tests on PostgreSQL ==============================="
cat "$postgres_log"
rm -rf "$cluster_log" "$postgres_log" "$rcs"
echo "pytest: everything else rc=$rest, multi-node tier rc=$cluster, PostgreSQL tier rc=$postgres, $(( $(date +%s) - started )) s"
[ "$rest" -eq 0 ] && [ "$cluster" -eq 0 ] && [ "$postgres" -eq 0 ]
