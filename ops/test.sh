#!/usr/bin/env bash
# The README's test command: installs what the tests need (ops/setup.sh), builds the vdrep
# binary the end-to-end tests run, then runs every test with nextest.
#   bash ops/test.sh           # the suite CI runs (well under 20 minutes)
#   bash ops/test.sh --long    # the long suite: tests marked #[ignore] (fault loops, big images)
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
cargo build --bins --quiet
if [ "${1:-}" = "--long" ]; then
  exec cargo nextest run --workspace --run-ignored ignored-only --no-fail-fast
fi
exec cargo nextest run --workspace --no-fail-fast
