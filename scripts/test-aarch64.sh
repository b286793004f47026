#!/usr/bin/env bash
# Tests the aarch64 build on x86_64 under qemu-user (no Raspberry Pi needed):
#   1. scripts/build-aarch64.sh (prerequisites + release cross-build)
#   2. the library's unit tests, cross-compiled and run under qemu
#   3. one end-to-end run of the aarch64 sparkd under qemu: replay camera over
#      one demo photo, CenterFace on the aarch64 ONNX Runtime, a private
#      mosquitto; passes when an inference record labelled "face" arrives,
#      `sparkctl status` answers, and SIGTERM exits 0
#   4. glibc symbol versions (<= 2.36, Raspberry Pi OS bookworm) and sizes
#
#   scripts/test-aarch64.sh
#   SPARK_SKIP_UNIT=1 scripts/test-aarch64.sh    only the end-to-end run
#   CARGO_TARGET_DIR=DIR ...                     (default: target-aarch64/)
#   SPARK_E2E_TIMEOUT_SECS=N                     wait for the record (default 600)
#
# Emulation is slow (a 512x512 frame takes 9-17 s), so the end-to-end run uses
# a 320x320 model input, one photo and a low frame rate.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/deps"
TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-aarch64}"
REL="$CARGO_TARGET_DIR/$TARGET/release"
ORT_LIB="$DEPS/onnxruntime-aarch64/libonnxruntime.so.1.31.1"
QEMU=("$ROOT/scripts/qemu-aarch64")
E2E_TIMEOUT="${SPARK_E2E_TIMEOUT_SECS:-600}"

log() { printf '[test-aarch64] %s\n' "$*" >&2; }

"$ROOT/scripts/build-aarch64.sh"

for f in "$ROOT/models/centerface.onnx" "$ROOT/models/demo/astronaut.png"; do
  [[ -s "$f" ]] || { echo "$f is missing: run scripts/setup.sh first" >&2; exit 1; }
done

# --- 2. unit tests under qemu ---------------------------------------------
if [[ "${SPARK_SKIP_UNIT:-0}" != 1 ]]; then
  log "cargo test --release --target $TARGET --lib (under qemu)"
  t0=$SECONDS
  (cd "$ROOT" && \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$ROOT/scripts/qemu-aarch64" \
    ORT_DYLIB_PATH="$ORT_LIB" \
    cargo test --release --locked --target "$TARGET" --lib)
  log "unit tests under qemu took $((SECONDS - t0)) s (build included)"
fi

# --- 3. end-to-end under qemu ----------------------------------------------
TMP="$(mktemp -d /tmp/spark-aarch64-e2e.XXXXXX)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

show_logs() {
  echo "--- sparkd log ---" >&2; tail -n 40 "$TMP/sparkd.log" >&2 || true
  echo "--- mosquitto log ---" >&2; tail -n 20 "$TMP/mosquitto.log" >&2 || true
}

t_e2e=$SECONDS
PORT="$(free_port)"
DEVICE=qemu-e2e
mkdir -p "$TMP/demo" "$TMP/state"
cp "$ROOT/models/demo/astronaut.png" "$TMP/demo/"

{
  echo "listener $PORT 127.0.0.1"
  echo "allow_anonymous true"
  echo "persistence false"
  echo "max_queued_messages 0"
  echo "log_dest file $TMP/mosquitto.log"
  # As root, mosquitto would otherwise drop to user `mosquitto`.
  if [[ "$(id -u)" == 0 ]]; then echo "user root"; fi
} >"$TMP/mosquitto.conf"
mosquitto -c "$TMP/mosquitto.conf" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$PORT" 10 || { echo "mosquitto did not start on port $PORT" >&2; show_logs; exit 1; }

# The demo model at a smaller input: same file and checksum, 320x320 instead
# of 640x480 (CenterFace takes any multiple of 32).
sed -e 's/^width = .*/width = 320/' -e 's/^height = .*/height = 320/' \
    "$ROOT/models/centerface.toml" >"$TMP/centerface.toml"
cp "$ROOT/models/centerface.onnx" "$TMP/"

cat >"$TMP/sparkd.toml" <<EOF
device_id = "$DEVICE"
state_dir = "$TMP/state"
socket_path = "$TMP/state/sparkd.sock"

[camera]
source = "replay"
replay_dir = "$TMP/demo"
fps = 0.2
queue_frames = 1

[model]
manifest = "$TMP/centerface.toml"
onnxruntime_library = "$ORT_LIB"
intra_threads = 2

[telemetry]
interval_secs = 60.0

[mqtt]
url = "mqtt://127.0.0.1:$PORT"
EOF

"${QEMU[@]}" "$REL/sparkd" check-config "$TMP/sparkd.toml" >/dev/null

mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -t "spark/$DEVICE/inference" -C 1 -W "$E2E_TIMEOUT" \
  >"$TMP/inference.json" 2>"$TMP/sub.err" &
SUB=$!
PIDS+=($SUB)
sleep 1

log "starting the aarch64 sparkd under qemu (broker on port $PORT)"
"${QEMU[@]}" "$REL/sparkd" run --config "$TMP/sparkd.toml" >"$TMP/sparkd.log" 2>&1 &
DAEMON=$!
PIDS+=($DAEMON)

# Wait for the record, but fail at once if the daemon dies first.
while kill -0 "$SUB" 2>/dev/null; do
  if ! kill -0 "$DAEMON" 2>/dev/null; then
    echo "sparkd exited before publishing an inference record" >&2; show_logs; exit 1
  fi
  sleep 0.5
done
if ! wait "$SUB"; then
  echo "no inference record within $E2E_TIMEOUT s: $(cat "$TMP/sub.err")" >&2
  show_logs; exit 1
fi
record="$(cat "$TMP/inference.json")"
log "first inference record after $((SECONDS - t_e2e)) s: $record"
grep -q '"label":"face"' <<<"$record" || { echo "the record has no face label" >&2; show_logs; exit 1; }
grep -q '"engine":"onnx-cpu"' <<<"$record" || { echo "the record does not name the onnx-cpu engine" >&2; show_logs; exit 1; }

status="$("${QEMU[@]}" "$REL/sparkctl" --socket "$TMP/state/sparkd.sock" status --json)" || {
  echo "sparkctl status failed" >&2; show_logs; exit 1; }
grep -q '"onnx-cpu"' <<<"$status" || { echo "sparkctl status does not report onnx-cpu: $status" >&2; exit 1; }
log "sparkctl status --json: $status"

t_stop=$SECONDS
kill -TERM "$DAEMON"
rc=0
# Generous: an emulated inference in flight finishes before the drain.
for ((i = 0; i < 600; i++)); do
  kill -0 "$DAEMON" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$DAEMON" 2>/dev/null; then
  echo "sparkd did not exit within 60 s of SIGTERM" >&2; kill -KILL "$DAEMON"; show_logs; exit 1
fi
wait "$DAEMON" || rc=$?
if [[ "$rc" != 0 ]]; then echo "sparkd exited $rc after SIGTERM (want 0)" >&2; show_logs; exit 1; fi
log "SIGTERM: exit 0 after $((SECONDS - t_stop)) s"
log "end-to-end under qemu took $((SECONDS - t_e2e)) s"

# --- 4. glibc and size -------------------------------------------------------
for f in "$REL/sparkd" "$REL/sparkctl" "$ORT_LIB"; do
  max="$(aarch64-linux-gnu-objdump -T "$f" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
  if [[ "$(printf '%s\n2.36\n' "$max" | sort -V | tail -n1)" != 2.36 ]]; then
    echo "$f needs GLIBC_$max; Raspberry Pi OS bookworm has 2.36" >&2; exit 1
  fi
  s="$(mktemp)"; aarch64-linux-gnu-strip -o "$s" "$f"
  log "$(basename "$f"): newest glibc symbol GLIBC_$max (<= 2.36), stripped size $(stat -c %s "$s") bytes"
  rm -f "$s"
done
log "all aarch64 checks passed"
