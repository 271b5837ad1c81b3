#!/usr/bin/env bash
# Checks the systemd unit: `systemd-analyze verify` (any complaint fails) and the exposure score
# of `systemd-analyze security --offline=yes` (must be 2.9 "OK" or better).
#
#   scripts/check-systemd-unit.sh [UNIT] [BINARY]
#
# UNIT defaults to systemd/m365-archiver.service (a template name@.service is checked as
# name@example.service), BINARY to target/debug/m365-archiver. The unit
# is checked inside a scratch root holding the unit, the binary at /usr/bin and systemd's own
# units, so nothing is installed on this machine. Installs systemd with apt-get if
# systemd-analyze is missing. Prints "exposure N.N" on success.
# Exit codes: 0 passed, 1 failed, 77 systemd-analyze unavailable and not installable (skip).
set -euo pipefail
cd "$(dirname "$0")/.."

UNIT="${1:-systemd/m365-archiver.service}"
BINARY="${2:-target/debug/m365-archiver}"
MAX_EXPOSURE="2.9"

log() { printf 'check-systemd-unit: %s\n' "$*" >&2; }

if ! command -v systemd-analyze >/dev/null 2>&1; then
    log "systemd-analyze not found; installing systemd with apt-get"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "SKIP: not root and no sudo, cannot install systemd"; exit 77; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends systemd; } >&2 \
        || { log "SKIP: apt-get could not install systemd"; exit 77; }
fi
[ -f "${UNIT}" ] || { log "no unit at ${UNIT}"; exit 1; }
[ -x "${BINARY}" ] || { log "no binary at ${BINARY} (cargo build first)"; exit 1; }

ROOT="$(mktemp -d "${TMPDIR:-/tmp}/m365-unit.XXXXXXXX")"
trap 'rm -rf "${ROOT}"' EXIT
NAME="$(basename "${UNIT}")"
mkdir -p "${ROOT}/usr/bin" "${ROOT}/bin" "${ROOT}/etc/systemd/system" "${ROOT}/usr/lib/systemd"
cp "${BINARY}" "${ROOT}/usr/bin/m365-archiver"
# ExecReload's kill: only its presence matters to verify (the host's may be a shell builtin).
printf '#!/bin/sh\nexit 0\n' >"${ROOT}/bin/kill"
chmod +x "${ROOT}/bin/kill"
# systemd's own units (sysinit.target, ...) that every service depends on.
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "${dir}" ]; then
        cp -r "${dir}" "${ROOT}/usr/lib/systemd/"
        break
    fi
done
cp "${UNIT}" "${ROOT}/etc/systemd/system/${NAME}"
# A template (name@.service) is checked as one instance of it.
if [[ "${NAME}" == *@.service ]]; then
    NAME="${NAME%@.service}@example.service"
    cp "${UNIT}" "${ROOT}/etc/systemd/system/${NAME}"
    UNIT="${ROOT}/etc/systemd/system/${NAME}"
fi

# verify exits 0 on unknown keys and other warnings: any output is a failure.
VERIFY_OUT="$(systemd-analyze verify --root="${ROOT}" --man=no "${NAME}" 2>&1)" || {
    printf '%s\n' "${VERIFY_OUT}" >&2
    log "FAIL: systemd-analyze verify"
    exit 1
}
if [ -n "${VERIFY_OUT}" ]; then
    printf '%s\n' "${VERIFY_OUT}" >&2
    log "FAIL: systemd-analyze verify complained"
    exit 1
fi

SECURITY_OUT="$(systemd-analyze security --offline=yes --no-pager "${UNIT}" 2>&1)" || true
EXPOSURE="$(printf '%s\n' "${SECURITY_OUT}" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' | tail -n 1)"
if [ -z "${EXPOSURE}" ]; then
    printf '%s\n' "${SECURITY_OUT}" >&2
    log "FAIL: no exposure level in the output of systemd-analyze security"
    exit 1
fi
if ! awk -v e="${EXPOSURE}" -v m="${MAX_EXPOSURE}" 'BEGIN { exit !(e <= m) }'; then
    printf '%s\n' "${SECURITY_OUT}" | grep -E '^✗' >&2 || true
    log "FAIL: exposure ${EXPOSURE} is above ${MAX_EXPOSURE}"
    exit 1
fi
echo "exposure ${EXPOSURE}"
