#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against the simulator over real HTTP, on
# SQLite and on a throwaway PostgreSQL cluster, with the archive in a folder, on Azurite (the
# Azure Storage emulator) and on the WORM test double; this script starts and stops PostgreSQL
# and Azurite itself.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-postgres.sh scripts/with-azurite.sh cargo test --locked --lib --bins --tests "$@"
