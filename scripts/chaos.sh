#!/usr/bin/env bash
# The chaos suite at a large scale (issue #7; docs/operations.md, "Chaos suite"):
#
#   scripts/chaos.sh [--users N] [--minutes M] [--replicas R] [--seed S]
#
# Replica daemons on one PostgreSQL archive a simulated tenant (Copilot and chats) into Azurite
# while replicas are SIGKILLed and restarted, PostgreSQL is restarted and stopped for a while,
# the store is unreachable for a minute at a time, and the simulator answers 429 storms and
# 5xx; afterwards the archive must equal the ground truth, with nothing duplicated and no
# checkpoint ahead of the archive. Defaults: 200 users, 10 minutes, 3 replicas, seed 20261123.
# The test starts its own PostgreSQL cluster and Azurite (from the binaries the wrappers find
# or install), so that stopping them disturbs nothing else. `chaos_small`, the same code at a
# size that takes under a minute, runs with the normal suite (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '4p' "$0" | sed 's/^#   /usage: /' >&2
    exit 2
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --users) export M365_CHAOS_USERS="${2:?}"; shift 2 ;;
        --minutes) export M365_CHAOS_MINUTES="${2:?}"; shift 2 ;;
        --replicas) export M365_CHAOS_REPLICAS="${2:?}"; shift 2 ;;
        --seed) export M365_CHAOS_SEED="${2:?}"; shift 2 ;;
        -h|--help) usage ;;
        *) printf 'chaos: unknown argument %s\n' "$1" >&2; usage ;;
    esac
done

exec scripts/with-postgres.sh scripts/with-azurite.sh \
    cargo test --release --locked --test integration chaos_large -- --ignored --nocapture
