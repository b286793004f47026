#!/usr/bin/env bash
# Builds the arm64 Debian package for Raspberry Pi OS bookworm:
#   1. cargo-deb 3.x (installed with `cargo install --locked` when missing)
#   2. scripts/build-aarch64.sh (cross-build + aarch64 ONNX Runtime)
#   3. cargo deb --target aarch64-unknown-linux-gnu --no-build
#   4. tests/package/check-deb.sh on the result (SPARK_SKIP_CHECK=1 skips it)
#
#   scripts/package-deb.sh
#   CARGO_TARGET_DIR=DIR scripts/package-deb.sh   (default: target-aarch64/)
#
# Prints the path of the .deb on stdout (last line). Needs scripts/setup.sh
# to have run once: the package ships models/centerface.onnx and the demo
# photos it produces.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-aarch64}"
CARGO_DEB_REQ='^3'

log() { printf '[package-deb] %s\n' "$*" >&2; }

install_cargo_deb() {
  local v
  v="$(cargo deb --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n1 || true)"
  if [[ "${v%%.*}" != 3 ]]; then
    log "cargo install cargo-deb --locked --version '$CARGO_DEB_REQ' (found: ${v:-none})"
    cargo install cargo-deb --locked --version "$CARGO_DEB_REQ" >&2
  fi
}

check_inputs() {
  local f
  for f in "$ROOT/models/centerface.onnx" "$ROOT/models/demo/astronaut.png"; do
    [[ -s "$f" ]] || { echo "$f is missing: run scripts/setup.sh first" >&2; exit 1; }
  done
}

# sparkctl's shell completions and man pages, generated from its CLI
# definition by the arm64 binary itself (under qemu on another host) into the
# release dir, where the package's `target/release/...` assets find them.
gen_cli_docs() {
  local rel="$CARGO_TARGET_DIR/$TARGET/release" run=()
  [[ "$(uname -m)" == aarch64 ]] || run=("$ROOT/scripts/qemu-aarch64")
  rm -rf "$rel/completions" "$rel/man" && mkdir -p "$rel/completions" "$rel/man"
  "${run[@]}" "$rel/sparkctl" completions bash >"$rel/completions/sparkctl"
  "${run[@]}" "$rel/sparkctl" completions zsh >"$rel/completions/_sparkctl"
  "${run[@]}" "$rel/sparkctl" completions fish >"$rel/completions/sparkctl.fish"
  "${run[@]}" "$rel/sparkctl" man --out-dir "$rel/man"
  # cargo-deb compresses only man pages it did not find under target/release.
  gzip -9n "$rel/man/"*.1
}

install_cargo_deb
check_inputs
# The build date `sparkctl doctor` holds the clock against and cargo-deb
# stamps the archive with (reproducible-builds convention); build-aarch64.sh
# picks the same default, so the test stage's build is reused here.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
"$ROOT/scripts/build-aarch64.sh" >&2
gen_cli_docs

log "cargo deb --target $TARGET --no-build"
# The release profile already strips symbols; cargo-deb would need the
# cross strip otherwise.
deb="$(cd "$ROOT" && cargo deb --target "$TARGET" --no-build --no-strip | tail -n1)"
[[ -f "$deb" ]] || { echo "cargo deb did not report a package path (got: $deb)" >&2; exit 1; }
log "built $deb ($(stat -c %s "$deb") bytes)"

if [[ "${SPARK_SKIP_CHECK:-0}" != 1 ]]; then
  "$ROOT/tests/package/check-deb.sh" "$deb" >&2
fi
echo "$deb"
