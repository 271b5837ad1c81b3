#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against the simulator over real HTTP, on
# SQLite and on a throwaway PostgreSQL cluster that this script starts and stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-postgres.sh cargo test --locked --all-targets "$@"
