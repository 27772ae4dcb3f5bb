#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries the tests need (initdb, pg_ctl) are installed;
# installs Debian's `postgresql` package when they are not. Idempotent.
#
# It never starts or configures a server: tests/pgserver.py runs a throwaway one of its own.
# (The Debian package may auto-start a cluster on :5432; we leave it alone and never use it.)
#
# Nothing to do when the tests will not need local binaries:
#   TURNSTREAM_TEST_DB=sqlite           only SQLite is tested
#   TURNSTREAM_TEST_PG_URL=postgresql://...   tests use that server instead
set -euo pipefail

have_binaries() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  command -v initdb >/dev/null && command -v pg_ctl >/dev/null
}

if [[ "${TURNSTREAM_TEST_DB:-all}" == "sqlite" ]]; then
  exit 0
fi
if [[ -n "${TURNSTREAM_TEST_PG_URL:-}" ]]; then
  echo "ensure-postgres: using TURNSTREAM_TEST_PG_URL; no local server binaries needed"
  exit 0
fi
if have_binaries; then
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
  cat >&2 <<'EOF'
ensure-postgres: PostgreSQL server binaries (initdb, pg_ctl) are not installed, and installing
them needs root. Do one of:
  sudo scripts/ensure-postgres.sh                  # Debian/Ubuntu: apt-get install postgresql
  brew install postgresql / dnf install postgresql-server   # then make sure initdb is on PATH
  export TURNSTREAM_TEST_PG_URL=postgresql://user@host:5432/postgres   # a server you own (>= 13)
  export TURNSTREAM_TEST_DB=sqlite                 # test SQLite only
EOF
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-postgres: no apt-get here; install PostgreSQL >= 13 (initdb, pg_ctl on PATH)" >&2
  exit 1
fi

echo "ensure-postgres: installing PostgreSQL with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends postgresql

if ! have_binaries; then
  echo "ensure-postgres: installed the postgresql package but still found no initdb" >&2
  exit 1
fi
echo "ensure-postgres: installed $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1)"
