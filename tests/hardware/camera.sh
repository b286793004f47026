#!/usr/bin/env bash
# Camera bring-up check for a technician on a Raspberry Pi 5 (or any Linux
# box) with a USB (UVC) camera, or a CSI camera through libcamera's V4L2
# compatibility layer. Changes no configuration: it lists what the kernel
# sees, then runs a private sparkd (its own state dir and socket, no broker
# needed) with camera.source = "v4l" for a few seconds and shows the frames
# it captured and dropped. One PASS/FAIL/WARN/SKIP line per check; exits 1
# if any check failed.
#
#   tests/hardware/camera.sh                          /dev/video0, auto format
#   DEVICE=/dev/video2 PIXEL_FORMAT=yuyv tests/hardware/camera.sh
#   WIDTH=1280 HEIGHT=720 FPS=10 SECONDS_PER_RUN=15 tests/hardware/camera.sh
#   LIBCAMERIFY=1 tests/hardware/camera.sh            CSI camera via libcamerify
#   MIC=1 MIC_DEVICE=default tests/hardware/camera.sh also meter the microphone
#   SNAPSHOT=/tmp/snap.png ...                        where the model-input PNG goes
#   SPARKD=/usr/bin/sparkd SPARKCTL=/usr/bin/sparkctl ...   binaries to use
#   MANIFEST=/usr/share/sparkd/models/centerface.toml ...   model to run
#
# Stop a running sparkd service first if it uses the same camera
# (systemctl stop sparkd): a V4L2 device streams to one process at a time.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEVICE="${DEVICE:-/dev/video0}"
PIXEL_FORMAT="${PIXEL_FORMAT:-auto}"
WIDTH="${WIDTH:-640}"
HEIGHT="${HEIGHT:-480}"
FPS="${FPS:-5}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
SNAPSHOT="${SNAPSHOT:-/tmp/sparkd-camera-snapshot.png}"
MIC="${MIC:-0}"
MIC_DEVICE="${MIC_DEVICE:-default}"

# shellcheck source=lib.sh
source "$ROOT/tests/hardware/lib.sh"
plain() { sed 's/\x1b\[[0-9;]*m//g'; } # strip terminal colours from the log
json_field() { # json, dotted.path
  python3 -c 'import json,sys
v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v=v.get(k) if isinstance(v,dict) else None
print("" if v is None else v)' "$1" "$2" 2>/dev/null
}

echo "== camera check ($(uname -nmr), $(date -u +%FT%TZ)): $DEVICE, $PIXEL_FORMAT ${WIDTH}x${HEIGHT} @ ${FPS} fps"

# 1. Video nodes the kernel created.
shopt -s nullglob
nodes=(/dev/video*)
if ((${#nodes[@]})); then
  pass "video nodes: ${nodes[*]}"
  for n in "${nodes[@]}"; do
    idx="${n#/dev/video}"
    name="$(cat "/sys/class/video4linux/video$idx/name" 2>/dev/null || echo '?')"
    info "$n: $name ($(stat -c '%A %U:%G' "$n"))"
  done
else
  fail "no /dev/video* nodes: no camera driver bound (USB: check lsusb and dmesg for uvcvideo; CSI: check the ribbon cable and camera_auto_detect=1 in config.txt)"
fi
media=(/dev/media*)
((${#media[@]})) && info "media controllers: ${media[*]} (libcamera uses these for CSI cameras)"
heaps=(/dev/dma_heap/*)
((${#heaps[@]})) && info "DMA heaps: ${heaps[*]} (libcamera allocates frame buffers here)"
command -v lsusb >/dev/null 2>&1 && lsusb 2>/dev/null | grep -Ei 'camera|video|webcam|uvc' | sed 's/^/      usb: /'

# 2. The chosen device.
if [[ ! -e "$DEVICE" ]]; then
  fail "$DEVICE does not exist (set DEVICE=...; UVC cameras usually expose two nodes, the first is the capture one)"
elif [[ -r "$DEVICE" && -w "$DEVICE" ]]; then
  pass "$DEVICE is read/writable by $(id -un)"
else
  fail "$DEVICE is not read/writable by $(id -un) ($(stat -c '%A %U:%G' "$DEVICE")): add the user to group video (the sparkd unit has SupplementaryGroups=video)"
fi
if [[ -e "$DEVICE" ]] && command -v fuser >/dev/null 2>&1 && holders="$(fuser "$DEVICE" 2>/dev/null)" && [[ -n "$holders" ]]; then
  warn "$DEVICE is open by PID(s)$holders: a running sparkd or another program may hold the stream (systemctl stop sparkd)"
fi

# 3. What the driver offers.
if command -v v4l2-ctl >/dev/null 2>&1; then
  v4l2-ctl --list-devices 2>/dev/null | sed 's/^/      /'
  if out="$(v4l2-ctl -d "$DEVICE" --info --list-formats-ext 2>&1)"; then
    pass "v4l2-ctl --list-formats-ext ($DEVICE)"
    echo "$out" | sed 's/^/      /'
    if echo "$out" | grep -Eq "'(MJPG|YUYV)'"; then
      pass "$DEVICE offers MJPG or YUYV (what sparkd converts)"
    else
      fail "$DEVICE offers neither MJPG nor YUYV; for a CSI camera run with LIBCAMERIFY=1 (libcamera converts)"
    fi
  else
    fail "v4l2-ctl could not query $DEVICE:"
    echo "$out" | head -5 | sed 's/^/      /'
  fi
else
  skip "v4l2-ctl not installed (apt-get install v4l-utils): formats not listed here; sparkd logs what it negotiates"
fi

# 3b. What sparkctl's own inventory says, with this user's rights.
SPARKD_BIN="$(find_bin sparkd "${SPARKD:-}")"
SPARKCTL_BIN="$(find_bin sparkctl "${SPARKCTL:-}")"
if [[ -n "$SPARKCTL_BIN" ]]; then
  if out="$("$SPARKCTL_BIN" camera list --local 2>&1)"; then
    pass "sparkctl camera list --local finds a capture device"
  else
    fail "sparkctl camera list --local finds no capture device"
  fi
  echo "$out" | plain | sed 's/^/      /'
fi

# 4. libcamera (CSI cameras).
LAUNCH=()
if [[ "${LIBCAMERIFY:-0}" == 1 ]]; then
  if command -v libcamerify >/dev/null 2>&1; then
    LAUNCH=(libcamerify)
    pass "libcamerify found: sparkd runs under libcamera's V4L2 compatibility layer"
  else
    fail "LIBCAMERIFY=1 but libcamerify is not installed (apt-get install libcamera-v4l2)"
  fi
fi
for c in rpicam-hello libcamera-hello; do
  if command -v "$c" >/dev/null 2>&1; then
    info "$c --list-cameras:"
    timeout 20 "$c" --list-cameras 2>&1 | head -20 | sed 's/^/      /'
    break
  fi
done

# 5. sparkd itself, for SECONDS_PER_RUN seconds.
MANIFEST="${MANIFEST:-}"
if [[ -z "$MANIFEST" ]]; then
  for m in "$ROOT/models/centerface.toml" /usr/share/sparkd/models/centerface.toml; do
    [[ -f "$m" ]] && { MANIFEST="$m"; break; }
  done
fi
if [[ -z "$SPARKD_BIN" || -z "$SPARKCTL_BIN" ]]; then
  skip "sparkd run: no sparkd/sparkctl build found (cargo build --release, or set SPARKD/SPARKCTL)"
elif [[ -z "$MANIFEST" ]]; then
  skip "sparkd run: no model manifest (scripts/setup.sh, or set MANIFEST=...)"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  cat >"$work/sparkd.toml" <<EOF
device_id = "camera-check"
state_dir = "$work/state"
socket_path = "$work/sparkd.sock"
[camera]
source = "v4l"
device = "$DEVICE"
pixel_format = "$PIXEL_FORMAT"
width = $WIDTH
height = $HEIGHT
fps = $FPS
queue_frames = 2
[model]
manifest = "$MANIFEST"
[telemetry]
interval_secs = 60
[mqtt]
# Nothing listens here: records stay in the private outbox, which is deleted.
url = "mqtt://127.0.0.1:9"
EOF
  if [[ "$MIC" == 1 ]]; then
    VAD=""
    for m in "$ROOT/models/silero_vad.onnx" /usr/share/sparkd/models/silero_vad.onnx; do
      [[ -f "$m" ]] && { VAD="$m"; break; }
    done
    if [[ -n "$VAD" ]]; then
      printf '[audio]\nenabled = true\ndevice = "%s"\nmodel = "%s"\n' "$MIC_DEVICE" "$VAD" >>"$work/sparkd.toml"
    else
      warn "MIC=1 but no Silero VAD model (scripts/setup.sh): microphone not checked"
      MIC=0
    fi
  fi
  [[ -f "$ROOT/deps/onnxruntime/libonnxruntime.so" && -z "${ORT_DYLIB_PATH:-}" ]] &&
    export ORT_DYLIB_PATH="$ROOT/deps/onnxruntime/libonnxruntime.so"
  info "running ${LAUNCH[*]:+${LAUNCH[*]} }$SPARKD_BIN for ${SECONDS_PER_RUN}s (log: $work/sparkd.log)"
  RUST_LOG=info "${LAUNCH[@]}" "$SPARKD_BIN" run --config "$work/sparkd.toml" >"$work/sparkd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do [[ -S "$work/sparkd.sock" ]] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  sleep "$SECONDS_PER_RUN"
  ctl() { "$SPARKCTL_BIN" --socket "$work/sparkd.sock" "$@"; }
  # What sparkd sees, with its rights; the node it streams from is marked.
  if list="$(ctl camera list --json 2>&1)"; then
    in_use="$(python3 -c 'import json,sys
r=json.loads(sys.argv[1]); print(" ".join(d["path"] for d in r["devices"] if d.get("in_use")))' "$list" 2>/dev/null)"
    pass "sparkctl camera list: sparkd sees a capture device${in_use:+, streaming from $in_use}"
  else
    fail "sparkctl camera list: sparkd sees no capture device"
  fi
  ctl camera list 2>&1 | plain | sed 's/^/      /'
  # The next frame as the model sees it.
  if snap="$(ctl camera snapshot --force "$SNAPSHOT" 2>&1)"; then
    pass "sparkctl camera snapshot: $SNAPSHOT (look at it: this is the model's input)"
  else
    fail "sparkctl camera snapshot failed"
  fi
  echo "$snap" | plain | sed 's/^/      /'
  if [[ "$MIC" == 1 ]]; then
    info "speak into the microphone now (3 s):"
    if meter="$(ctl mic level --seconds 3 2>&1)"; then
      pass "sparkctl mic level: $(echo "$meter" | tail -1)"
    else
      fail "sparkctl mic level: $(echo "$meter" | tail -1)"
    fi
  fi
  status="$(ctl status --json 2>&1)"
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  captured="$(json_field "$status" inference.frames_captured)"
  dropped="$(json_field "$status" inference.frames_dropped)"
  inferred="$(json_field "$status" inference.total)"
  grep -E 'camera (opened|streaming|unavailable|picked)|negotiat|bad frame|frame dropped' "$work/sparkd.log" | plain | head -10 | sed 's/^/      log: /'
  if [[ -z "$captured" ]]; then
    fail "sparkd did not answer status (exited?); last log lines:"
    tail -15 "$work/sparkd.log" | plain | sed 's/^/      /'
  elif ((captured > 0)); then
    rate="$(awk -v n="$captured" -v s="$SECONDS_PER_RUN" 'BEGIN { printf "%.1f", n / s }')"
    pass "sparkd captured $captured frames in ~${SECONDS_PER_RUN}s (~$rate fps, asked $FPS), $inferred inferred, $dropped dropped (queue full: inference slower than the camera)"
    awk -v r="$rate" -v f="$FPS" 'BEGIN { exit !(r < 0.7 * f) }' &&
      warn "capture rate well below camera.fps: low light (long exposure), USB bandwidth, or the CPU converting frames"
  else
    fail "sparkd captured no frames from $DEVICE; log:"
    grep -E 'WARN|ERROR' "$work/sparkd.log" | plain | head -10 | sed 's/^/      /'
  fi
fi

echo
if ((failures)); then
  echo "RESULT: FAIL ($failures check(s) failed)"
  exit 1
fi
echo "RESULT: PASS"
