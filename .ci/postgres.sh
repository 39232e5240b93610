#!/usr/bin/env bash
# A throwaway PostgreSQL server for the memekit storage tests (tests/search/test_postgres.py).
#
#   source .ci/postgres.sh             # exports MEMEKIT_TEST_POSTGRES_URL (what .ci/run does)
#   eval "$(.ci/postgres.sh)"          # the same from a shell that runs it as a program
#
# Idempotent and non-interactive (CI, root, no stdin): installs psycopg2-binary and Debian's
# postgresql when missing, creates a private cluster in $MEMEKIT_PG_DIR/data (default
# /tmp/memekit-postgres, data owned by the postgres user) listening on 127.0.0.1 only, port 5432
# when free (else a free port), with a random password kept in $MEMEKIT_PG_DIR, and a database
# memekit_test owned by role memekit. Rerunning reuses the running server, its port and password.
# Everything but the URL goes to stderr; logs show the URL with the password masked.

_memekit_pg_setup() {
    set -euo pipefail
    local dir=${MEMEKIT_PG_DIR:-/tmp/memekit-postgres}
    local data=$dir/data python=${PYTHON:-python} bindir password port
    log() { echo "postgres.sh: $*" >&2; }

    if ! "$python" -c "import psycopg2" 2>/dev/null; then
        log "installing psycopg2-binary"
        "$python" -m pip install -q psycopg2-binary </dev/null >&2
    fi

    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z $bindir || ! -x $bindir/initdb ]]; then
        log "installing Debian's postgresql"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -q postgresql </dev/null >&2; then
            apt-get update -q </dev/null >&2
            apt-get install -y -q postgresql </dev/null >&2
        fi
        bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi

    as_postgres() {
        if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
    }

    if [[ ! -s $data/PG_VERSION || ! -s $dir/password ]]; then
        log "creating a cluster in $data"
        rm -rf "$dir"
        mkdir -p "$data"
        chmod 700 "$dir"
        if [[ $(id -u) -eq 0 ]]; then chown postgres: "$data"; chmod 711 "$dir"; fi
        chmod 700 "$data"
        # initdb refuses to run as root; local socket: trust, TCP: password (scram-sha-256)
        as_postgres "$bindir/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --no-instructions >&2
        head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/password.tmp"
        mv "$dir/password.tmp" "$dir/password"
    fi
    password=$(cat "$dir/password")

    if as_postgres "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1 && [[ -s $dir/port ]]; then
        port=$(cat "$dir/port")
        log "reusing the server on 127.0.0.1:$port"
    else
        port=$("$python" -c '
import socket
for port in (5432, 0):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres does: TIME_WAIT is no obstacle
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    break')
        echo "$port" > "$dir/port"
        log "starting the server on 127.0.0.1:$port"
        as_postgres "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2 \
            || { tail -n 20 "$data/server.log" >&2; return 1; }
    fi

    sql() { as_postgres "$bindir/psql" -h "$data" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA -c "$1"; }
    [[ -n $(sql "SELECT 1 FROM pg_roles WHERE rolname = 'memekit'") ]] || sql "CREATE ROLE memekit LOGIN" >&2
    sql "ALTER ROLE memekit PASSWORD '$password'" >&2
    [[ -n $(sql "SELECT 1 FROM pg_database WHERE datname = 'memekit_test'") ]] \
        || sql "CREATE DATABASE memekit_test OWNER memekit" >&2
    echo "postgresql://memekit:$password@127.0.0.1:$port/memekit_test"
}

if [[ ${_MEMEKIT_PG_CHILD:-} == 1 ]]; then  # the setup, in its own bash so that set -e holds
    _memekit_pg_setup
    exit
fi

# a fresh bash process runs the setup: set -e is ignored inside an if/&& of the calling shell
if _memekit_pg_url=$(_MEMEKIT_PG_CHILD=1 bash "${BASH_SOURCE[0]}" </dev/null); then
    export MEMEKIT_TEST_POSTGRES_URL=$_memekit_pg_url
    echo "postgres.sh: MEMEKIT_TEST_POSTGRES_URL=$(sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#' <<<"$_memekit_pg_url") (exported)" >&2
    if [[ ${BASH_SOURCE[0]} == "$0" ]]; then  # run as a program: print the line to eval
        echo "export MEMEKIT_TEST_POSTGRES_URL=$_memekit_pg_url"
    fi
    unset _memekit_pg_url
else
    echo "postgres.sh: PostgreSQL setup failed (see above)" >&2
    unset _memekit_pg_url
    return 1 2>/dev/null || exit 1
fi
