#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (scripts/setup.sh), then
# every unit, integration, fault, FFI and packaging test of the workspace on
# x86_64, then the aarch64 stage: the arm64 .deb (scripts/package-deb.sh:
# release cross-build, packaged with cargo-deb and checked by
# tests/package/check-deb.sh, installed into a throwaway root), then
# scripts/test-aarch64.sh (the library's unit tests and one end-to-end demo
# run under qemu, glibc and size checks).
#
#   SPARK_AARCH64=0 scripts/test.sh    skip the aarch64 stage (quick local runs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
t0=$SECONDS
scripts/setup.sh
export RUST_BACKTRACE=1
# A clean clone builds once: incremental state would only cost disk and time.
if [[ "${CI:-}" == true ]]; then export CARGO_INCREMENTAL=0; fi
cargo build --locked --workspace --all-targets
cargo test --locked --workspace --no-fail-fast -- --test-threads=4
scripts/fuzz.sh short   # every fuzz target on its corpus plus 20000 generated inputs; fails on a crash
echo "[test] x86_64 suite done in $((SECONDS - t0)) s"
if [[ "${SPARK_AARCH64:-1}" != 0 ]]; then
  t1=$SECONDS
  # The package first: its release build is the one the aarch64 tests then
  # reuse. Run after the unit tests' build, the same release build
  # recompiled ring, lmdb-master-sys and the crates above them (169 s in a
  # CI run).
  scripts/package-deb.sh
  scripts/test-aarch64.sh
  echo "[test] aarch64 stage done in $((SECONDS - t1)) s"
fi
echo "[test] all done in $((SECONDS - t0)) s"
