#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (scripts/setup.sh), then
# every unit, integration, fault, FFI and packaging test of the workspace on
# x86_64, then the aarch64 release build with its unit tests and one
# end-to-end demo run under qemu (scripts/test-aarch64.sh).
#
#   SPARK_SKIP_AARCH64=1 scripts/test.sh    x86_64 only (quicker local runs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
t0=$SECONDS
scripts/setup.sh
export RUST_BACKTRACE=1
cargo build --locked --workspace --all-targets
cargo test --locked --workspace --no-fail-fast -- --test-threads=4
echo "[test] x86_64 suite done in $((SECONDS - t0)) s"
if [[ "${SPARK_SKIP_AARCH64:-0}" != 1 ]]; then
  scripts/test-aarch64.sh
fi
echo "[test] all done in $((SECONDS - t0)) s"
