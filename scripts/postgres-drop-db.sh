#!/usr/bin/env bash
# Drop the test database and role created by postgres-test-db.sh (name from the URL).
set -euo pipefail
url="$1"
db="${url##*/}"
case "$db" in berth_test_*) ;; *) echo "refusing to drop $db" >&2; exit 2 ;; esac
su postgres -c "psql -q -c 'DROP DATABASE IF EXISTS ${db} WITH (FORCE)' -c 'DROP ROLE IF EXISTS ${db}'" >/dev/null
