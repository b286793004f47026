#!/usr/bin/env bash
# Cross-builds sparkd and sparkctl for aarch64 (Raspberry Pi 5, Raspberry Pi OS
# bookworm arm64) on a Debian 12 x86_64 machine without Docker, and fetches
# what the aarch64 tests and the .deb need. Run as root (apt). Idempotent.
#
#   scripts/build-aarch64.sh                  prerequisites + release build
#   SPARK_SKIP_APT=1 scripts/build-aarch64.sh skip apt (packages already installed)
#   SPARK_SKIP_BUILD=1 ...                    prerequisites only
#   CARGO_TARGET_DIR=DIR ...                  build elsewhere (default: target-aarch64/)
#
# Produces:
#   $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/{sparkd,sparkctl}
#   deps/onnxruntime-aarch64/libonnxruntime.so.1.31.1 (+ libonnxruntime.so symlink)
#   deps/qemu/usr/bin/qemu-aarch64 (qemu 10 from bookworm-backports, for tests)
#
# With Docker, `CROSS_CONFIG=cross.toml cross build --release --target
# aarch64-unknown-linux-gnu` is the alternative (docs/deployment.md). Never
# run `cross` on the shared build machines: it replaces the Rust toolchain.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/deps"
TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-aarch64}"

log() { printf '[build-aarch64] %s\n' "$*" >&2; }
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

# Pinned: the wheel PyPI served (checked), and the newest glibc symbol
# version the binaries may need (Raspberry Pi OS bookworm ships glibc 2.36).
ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime-$ORT_VERSION-cp311-cp311-manylinux_2_28_aarch64.whl
ORT_WHEEL_SHA256=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3
GLIBC_MAX_ALLOWED=2.36
QEMU_SUITE=bookworm-backports
QEMU_MIN_MAJOR=10

APT_PACKAGES=(
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross   # linker and C compiler (ring, lmdb)
  libstdc++6-arm64-cross                        # libonnxruntime.so needs libstdc++ under qemu
  binutils-aarch64-linux-gnu                    # objdump/strip for the glibc and size checks
  python3-pip unzip                             # the onnxruntime wheel
  mosquitto mosquitto-clients                   # broker for the qemu end-to-end run
)
# cpal links ALSA: the build needs the arm64 ALSA library and headers
# (multiarch: `dpkg --add-architecture arm64`), found through pkg-config's
# arm64 directory (see build()).
ARM64_PACKAGES=(libasound2-dev:arm64)

install_apt() {
  if [[ "${SPARK_SKIP_APT:-0}" == 1 ]]; then return; fi
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "dpkg --add-architecture arm64 (for libasound2-dev:arm64)"
    dpkg --add-architecture arm64
  fi
  apt_install_missing "${APT_PACKAGES[@]}" "${ARM64_PACKAGES[@]}"
}

install_rust_target() {
  # rust-toolchain.toml pins the toolchain; add the target to that one.
  if ! (cd "$ROOT" && rustup target list --installed | grep -qx "$TARGET"); then
    log "rustup target add $TARGET"
    (cd "$ROOT" && rustup target add "$TARGET")
  fi
}

check_sha256() { # file expected
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    echo "checksum mismatch for $1: expected $2, got $got" >&2
    return 1
  fi
}

install_onnxruntime_aarch64() {
  local dir="$DEPS/onnxruntime-aarch64"
  local so="$dir/libonnxruntime.so.$ORT_VERSION"
  mkdir -p "$DEPS/wheels" "$dir"
  if [[ ! -s "$so" ]]; then
    if [[ ! -s "$DEPS/wheels/$ORT_WHEEL" ]]; then
      log "fetching $ORT_WHEEL (ONNX Runtime for aarch64)"
      python3 -m pip download -q --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --python-version 3.11 \
        -d "$DEPS/wheels" "onnxruntime==$ORT_VERSION" >&2
    fi
    check_sha256 "$DEPS/wheels/$ORT_WHEEL" "$ORT_WHEEL_SHA256"
    unzip -o -j -q "$DEPS/wheels/$ORT_WHEEL" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$dir"
  fi
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$dir/libonnxruntime.so"
}

# qemu-user from bookworm-backports, without touching the system's apt setup:
# a private sources list, lists directory and cache, then `apt-get download`
# and `dpkg-deb -x`. (Debian 12's own qemu 7.2 crashes ONNX Runtime.)
install_qemu() {
  local out="$DEPS/qemu"
  local bin="$out/usr/bin/qemu-aarch64"
  if [[ -x "$bin" ]] && qemu_ok "$bin"; then return; fi
  local apt="$DEPS/apt-backports"
  rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$apt/dl"
  cat >"$apt/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $QEMU_SUITE main
EOF
  local opts=(
    -o "APT::Sandbox::User=root"
    -o "Dir::Etc::SourceList=$apt/sources.list"
    -o "Dir::Etc::SourceParts=$apt/parts"
    -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache"
  )
  log "fetching qemu-user from $QEMU_SUITE (private apt lists under $apt)"
  apt-get "${opts[@]}" update -qq
  (cd "$apt/dl" && apt-get "${opts[@]}" download -qq "qemu-user/$QEMU_SUITE")
  # Keep only the emulator the tests use (the package holds ~370 MB of them).
  rm -rf "$out" "$apt/x" && mkdir -p "$out/usr/bin" "$apt/x"
  dpkg-deb -x "$apt"/dl/qemu-user_*.deb "$apt/x"
  cp "$apt/x/usr/bin/qemu-aarch64" "$out/usr/bin/"
  rm -rf "$apt"
  qemu_ok "$bin" || { echo "qemu from $QEMU_SUITE is not >= $QEMU_MIN_MAJOR or does not run: $bin" >&2; exit 1; }
}

qemu_ok() { # bin
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)"
  [[ -n "$v" && "$v" -ge "$QEMU_MIN_MAJOR" ]]
}

build() {
  if [[ "${SPARK_SKIP_BUILD:-0}" == 1 ]]; then return; fi
  log "cargo build --release --target $TARGET (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  local t0=$SECONDS
  # The build date `sparkctl doctor` holds the clock against (reproducible-
  # builds convention): the last commit's, so the test stage's build and the
  # package's are the same build and the second one is a no-op.
  export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
  # pkg-config finds the arm64 .pc files through the target-specific
  # variables in .cargo/config.toml (alsa-sys).
  (cd "$ROOT" && cargo build --release --locked --target "$TARGET" --bin sparkd --bin sparkctl)
  log "release build took $((SECONDS - t0)) s"
  check_binaries
}

# Newest GLIBC_x.y symbol version an ELF file needs.
glibc_max() {
  aarch64-linux-gnu-objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1
}

version_le() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$1" ]]; }

check_binaries() {
  local rel="$CARGO_TARGET_DIR/$TARGET/release"
  local f max stripped
  for f in "$rel/sparkd" "$rel/sparkctl" "$DEPS/onnxruntime-aarch64/libonnxruntime.so.$ORT_VERSION"; do
    aarch64-linux-gnu-objdump -f "$f" | grep -q 'elf64-littleaarch64' || { echo "$f is not an aarch64 ELF" >&2; exit 1; }
    max="$(glibc_max "$f")"
    if ! version_le "$max" "$GLIBC_MAX_ALLOWED"; then
      echo "$f needs GLIBC_$max; Raspberry Pi OS bookworm has $GLIBC_MAX_ALLOWED" >&2
      exit 1
    fi
    stripped="$(mktemp)"
    aarch64-linux-gnu-strip -o "$stripped" "$f"
    log "$(basename "$f"): needs GLIBC_$max (<= $GLIBC_MAX_ALLOWED), $(stat -c %s "$f") bytes, stripped $(stat -c %s "$stripped") bytes"
    rm -f "$stripped"
  done
}

install_apt
install_rust_target
install_onnxruntime_aarch64
install_qemu
build
