#!/usr/bin/env bash
# Create (or recreate) a throwaway PostgreSQL role and database for the store/API tests and
# print its SQLAlchemy URL.
set -euo pipefail
DB="berth_test_$$"
PASS="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
su postgres -c "PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1" >/dev/null <<SQL
DROP DATABASE IF EXISTS ${DB};
DROP ROLE IF EXISTS ${DB};
CREATE ROLE ${DB} LOGIN PASSWORD '${PASS}';
CREATE DATABASE ${DB} OWNER ${DB};
SQL
echo "postgresql+psycopg://${DB}:${PASS}@127.0.0.1:5432/${DB}"
