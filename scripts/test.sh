#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (scripts/setup.sh), then
# every unit, integration, fault and packaging test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
# No stray broker from a demo run may hold ports or sessions.
export RUST_BACKTRACE=1
cargo build --locked --workspace --all-targets
cargo test --locked --workspace -- --test-threads=4
