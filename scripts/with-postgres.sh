#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL 15 cluster, then destroys the cluster.
#
#   scripts/with-postgres.sh cargo test --lib state::
#
# The cluster lives in a fresh temporary directory, listens on a free port on 127.0.0.1 only
# (its unix socket stays inside that directory), trusts every local connection and runs with
# fsync off: it is for tests, never for data that matters. The command sees
#   M365_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres
#   M365_TEST_POSTGRES_BIN=<the PostgreSQL bin directory used>
# and this script exits with the command's exit code. The cluster is stopped and its directory
# removed on every exit path (success, failure, Ctrl-C, SIGTERM).
#
# Works as root (CI): the PostgreSQL binaries run as the `postgres` OS user, because initdb and
# postgres refuse to run as root. If no PostgreSQL binaries are installed, installs them with
# apt-get (needs root or sudo).
set -euo pipefail

PG_VERSION_WANTED=15
# Enough for many test processes each holding a small pool; tests run in parallel.
PG_MAX_CONNECTIONS=300

log() { printf 'with-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$#" -eq 0 ]; then
    die "usage: $0 COMMAND [ARGS...]"
fi

is_root() { [ "$(id -u)" -eq 0 ]; }

# Finds a PostgreSQL bin directory, preferring version 15; prints nothing if none is installed.
find_pg_bin() {
    local preferred="/usr/lib/postgresql/${PG_VERSION_WANTED}/bin"
    if [ -x "${preferred}/initdb" ]; then
        printf '%s\n' "${preferred}"
        return
    fi
    local candidate
    # Newest installed major version, if 15 itself is not there.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
        if [ -x "${candidate}/initdb" ]; then
            printf '%s\n' "${candidate}"
            return
        fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

install_postgres() {
    local sudo=""
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and we are neither root nor able to sudo; install postgresql-${PG_VERSION_WANTED}"
        sudo="sudo"
    fi
    log "PostgreSQL binaries not found; installing them with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >&2
    $sudo apt-get install -y -q "postgresql-${PG_VERSION_WANTED}" >&2 \
        || $sudo apt-get install -y -q postgresql >&2 \
        || die "could not install PostgreSQL with apt-get"
}

PG_BIN="$(find_pg_bin)"
if [ -z "${PG_BIN}" ]; then
    install_postgres
    PG_BIN="$(find_pg_bin)"
    [ -n "${PG_BIN}" ] || die "PostgreSQL was installed but initdb cannot be found"
fi

# As root, run the server as `postgres`; as anyone else, run it as ourselves.
if is_root; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/m365-pg.XXXXXXXX")"
DATA_DIR="${WORK_DIR}/data"
SOCKET_DIR="${WORK_DIR}/socket"
LOG_FILE="${WORK_DIR}/postgres.log"
STARTED=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "${STARTED}" -eq 1 ]; then
        as_pg "${PG_BIN}/pg_ctl" -D "${DATA_DIR}" -m immediate -w stop >/dev/null 2>&1 \
            || log "warning: could not stop the throwaway cluster in ${DATA_DIR}"
    fi
    rm -rf "${WORK_DIR}"
    exit "${rc}"
}
trap cleanup EXIT
# Turn signals into an ordinary exit so that the EXIT trap cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "${SOCKET_DIR}"
if is_root; then
    chown -R postgres: "${WORK_DIR}"
fi
chmod 700 "${WORK_DIR}"

as_pg "${PG_BIN}/initdb" -D "${DATA_DIR}" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C --no-sync >"${WORK_DIR}/initdb.log" 2>&1 \
    || { cat "${WORK_DIR}/initdb.log" >&2; die "initdb failed"; }

# True if something already listens on the port (bash's /dev/tcp; no extra tools needed).
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A random free port; the check can race with another process, so a failed start retries.
PORT=""
for _attempt in 1 2 3 4 5 6 7 8 9 10; do
    candidate=$((20000 + RANDOM % 40000))
    if port_in_use "${candidate}"; then
        continue
    fi
    if as_pg "${PG_BIN}/pg_ctl" -D "${DATA_DIR}" -l "${LOG_FILE}" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p ${candidate} -c unix_socket_directories=${SOCKET_DIR} -c max_connections=${PG_MAX_CONNECTIONS} -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1; then
        PORT="${candidate}"
        STARTED=1
        break
    fi
done
if [ -z "${PORT}" ]; then
    [ -f "${LOG_FILE}" ] && tail -n 20 "${LOG_FILE}" >&2
    die "could not start PostgreSQL (see the log above)"
fi

# pg_ctl -w already waited; this confirms the TCP listener the tests use accepts connections.
for _wait in $(seq 1 100); do
    if "${PG_BIN}/pg_isready" -q -h 127.0.0.1 -p "${PORT}" -U postgres; then
        break
    fi
    sleep 0.1
done
"${PG_BIN}/pg_isready" -q -h 127.0.0.1 -p "${PORT}" -U postgres \
    || die "PostgreSQL started but does not accept connections on 127.0.0.1:${PORT}"

export M365_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:${PORT}/postgres"
# Where the binaries are, for tests that run a cluster of their own (the chaos suite).
export M365_TEST_POSTGRES_BIN="${PG_BIN}"
log "$("${PG_BIN}/postgres" --version) ready at ${M365_TEST_POSTGRES_URL}"

# The command runs in the background so that a signal sent to this script alone (a CI timeout,
# systemd, kill) is handled at once: it is passed on to the command, which is waited for, and
# then the EXIT trap tears the cluster down. `<&0` keeps our stdin (background jobs would
# otherwise read /dev/null).
CHILD=""
on_signal() {
    local rc=$1
    if [ -n "${CHILD}" ]; then
        kill -TERM "${CHILD}" 2>/dev/null || true
        wait "${CHILD}" 2>/dev/null || true
    fi
    exit "${rc}"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

set +e
"$@" <&0 &
CHILD=$!
wait "${CHILD}"
CMD_RC=$?
set -e
exit "${CMD_RC}"
