#!/usr/bin/env bash
# Runs a command against a throwaway Azurite (Microsoft's Azure Storage emulator), then stops it.
#
#   scripts/with-azurite.sh cargo test --test integration azure::
#
# Azurite is installed from npm (package `azurite`, pinned below) into target/azurite/VERSION on
# first use and reused afterwards; it runs on a free port on 127.0.0.1 with a fresh temporary
# workspace. The command sees
#   M365_TEST_AZURITE_BLOB_ENDPOINT=http://127.0.0.1:PORT/devstoreaccount1
#   M365_TEST_AZURITE_SAS=<account SAS, all permissions, signed with the well-known dev key>
#   M365_TEST_AZURITE_BIN=<the azurite-blob executable>
# (tests create their own container per test) and this script exits with the command's exit
# code. Azurite is stopped and its workspace removed on every exit path.
#
# Azurite 3.37 declares Node >= 22 but runs on Node 20 (npm warns). It does not implement
# version-level WORM (immutability policies, legal holds); tests of those use the recording
# test double in tests/integration/blob_double.rs instead.
set -euo pipefail

AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
ACCOUNT=devstoreaccount1
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

log() { printf 'with-azurite: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$#" -eq 0 ]; then
    die "usage: $0 COMMAND [ARGS...]"
fi
command -v node >/dev/null 2>&1 || die "node is required (Azurite is a Node.js program)"
command -v npm >/dev/null 2>&1 || die "npm is required to install Azurite"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
INSTALL_DIR="${AZURITE_DIR:-${REPO}/target/azurite/${AZURITE_VERSION}}"
AZURITE_BIN="${INSTALL_DIR}/node_modules/.bin/azurite-blob"

if [ ! -x "${AZURITE_BIN}" ]; then
    log "installing azurite@${AZURITE_VERSION} from npm into ${INSTALL_DIR}"
    mkdir -p "${INSTALL_DIR}"
    npm install --prefix "${INSTALL_DIR}" --no-audit --no-fund --loglevel=error \
        "azurite@${AZURITE_VERSION}" >&2 || die "npm install azurite@${AZURITE_VERSION} failed"
fi

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/m365-azurite.XXXXXXXX")"
LOG_FILE="${WORK_DIR}/azurite.log"
AZURITE_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${AZURITE_PID}" ]; then
        kill -TERM "${AZURITE_PID}" 2>/dev/null || true
        wait "${AZURITE_PID}" 2>/dev/null || true
    fi
    rm -rf "${WORK_DIR}"
    exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Answers once Azurite listens (any HTTP status will do: 403 without credentials).
azurite_up() { curl -s -o /dev/null "http://127.0.0.1:$1/${ACCOUNT}?comp=list"; }

PORT=""
for _attempt in 1 2 3 4 5 6 7 8 9 10; do
    candidate=$((20000 + RANDOM % 40000))
    if port_in_use "${candidate}"; then
        continue
    fi
    "${AZURITE_BIN}" --blobHost 127.0.0.1 --blobPort "${candidate}" --location "${WORK_DIR}/data" \
        --skipApiVersionCheck --disableProductStyleUrl >"${LOG_FILE}" 2>&1 &
    AZURITE_PID=$!
    for _wait in $(seq 1 150); do
        if azurite_up "${candidate}"; then
            PORT="${candidate}"
            break
        fi
        kill -0 "${AZURITE_PID}" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "${PORT}" ] && break
    kill -TERM "${AZURITE_PID}" 2>/dev/null || true
    wait "${AZURITE_PID}" 2>/dev/null || true
    AZURITE_PID=""
done
if [ -z "${PORT}" ]; then
    tail -n 20 "${LOG_FILE}" >&2 || true
    die "could not start Azurite (see the log above)"
fi

# An account SAS (sv >= 2020-12-06) over every service, resource type and permission, valid
# for a day. String to sign: account, sp, ss, srt, st, se, sip, spr, sv, ses, each followed
# by a newline; signature = base64(HMAC-SHA256(base64decode(key), string to sign)).
SAS="$(ACCOUNT="${ACCOUNT}" ACCOUNT_KEY="${ACCOUNT_KEY}" node -e '
const crypto = require("crypto");
const iso = (d) => d.toISOString().replace(/\.\d{3}Z$/, "Z");
const p = { sp: "racwdlxtiyfup", ss: "b", srt: "sco", st: iso(new Date(Date.now() - 600e3)),
            se: iso(new Date(Date.now() + 86400e3)), spr: "https,http", sv: "2025-11-05" };
const toSign = [process.env.ACCOUNT, p.sp, p.ss, p.srt, p.st, p.se, "", p.spr, p.sv, "", ""].join("\n");
const sig = crypto.createHmac("sha256", Buffer.from(process.env.ACCOUNT_KEY, "base64"))
    .update(toSign, "utf8").digest("base64");
const q = new URLSearchParams({ ...p, sig });
process.stdout.write(q.toString());
')"

export M365_TEST_AZURITE_BLOB_ENDPOINT="http://127.0.0.1:${PORT}/${ACCOUNT}"
export M365_TEST_AZURITE_SAS="${SAS}"
# For tests that run an Azurite of their own (the chaos suite stops and starts it).
export M365_TEST_AZURITE_BIN="${AZURITE_BIN}"

# Proves the SAS works before handing over: create and delete a probe container.
probe="probe-$$-${RANDOM}"
status="$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Length: 0' \
    "${M365_TEST_AZURITE_BLOB_ENDPOINT}/${probe}?restype=container&${SAS}")"
[ "${status}" = "201" ] || { tail -n 20 "${LOG_FILE}" >&2; die "Azurite refused the test SAS (HTTP ${status})"; }
curl -s -o /dev/null -X DELETE "${M365_TEST_AZURITE_BLOB_ENDPOINT}/${probe}?restype=container&${SAS}" || true
log "azurite ${AZURITE_VERSION} ready at ${M365_TEST_AZURITE_BLOB_ENDPOINT}"

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
