#!/usr/bin/env bash
# Hailo-8 bring-up check for a technician on a Raspberry Pi 5 with the
# accelerator fitted. Read-only: it loads nothing into the kernel and changes
# no configuration. Prints what it finds, one PASS/FAIL/WARN/SKIP line per
# check, and exits 1 if any check failed.
#
#   tests/hardware/hailo.sh                     checks only
#   tests/hardware/hailo.sh yolov8s.hef         also run that Model Zoo detection HEF
#                                               and the CPU model on the demo photos
#   HEF=/path/model.hef tests/hardware/hailo.sh  also measure FPS of that HEF (hailortcli)
#   SPARKCTL=/usr/bin/sparkctl SPARKD=/usr/bin/sparkd ...   binaries to use
#   SECONDS_PER_RUN=10 ...                       length of each FPS run
#
# Without HEF it looks for models/centerface.hef (the demo model compiled for
# Hailo-8; see docs/hailo.md for where a HEF comes from).
#
# MODEL ZOO DETECTION HEF (the command-line argument). Any Hailo Model Zoo
# detection HEF compiled for hailo8 (not hailo8l) with on-chip NMS, e.g.
# yolov8s.hef or nanodet_repvgg.hef. Precompiled HEFs are published per Model
# Zoo release and architecture at
#   https://hailo-model-zoo.s3.eu-west-2.amazonaws.com/ModelZoo/Compiled/v2.<N>.0/hailo8/yolov8s.hef
#   https://hailo-model-zoo.s3.eu-west-2.amazonaws.com/ModelZoo/Compiled/v2.<N>.0/hailo8/nanodet_repvgg.hef
# (the links are also in the hailo8 "Public Models" tables of github.com/hailo-ai/hailo_model_zoo).
# Take the Model Zoo release whose release notes name HailoRT 4.23 (the
# version this device runs; a HEF from a release for another HailoRT may be
# refused with HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE): spark-edge has not
# checked which v2.<N> that is. `hailortcli parse-hef FILE` shows the target
# architecture. The check runs examples/hailo_photos.rs (built here with
# cargo, release) on models/demo: per photo the HEF's labels next to the CPU
# model's (models/nanodet.toml), then frames/s of both, one frame at a time
# with preparation and decoding, as sparkd runs them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
ZOO_HEF="${1:-}"
if [[ "$ZOO_HEF" == "-h" || "$ZOO_HEF" == "--help" ]]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
SUPPORTED_MINORS="21 22 23"   # HailoRT 4.21-4.23: the layouts hailo-sys was written for

# shellcheck source=lib.sh
source "$ROOT/tests/hardware/lib.sh"
has_subcommand() { # binary, subcommand
  [[ -n "$1" ]] && "$1" --help 2>/dev/null | grep -Eq "^[[:space:]]+$2([[:space:]]|$)"
}

echo "== Hailo-8 hardware check ($(uname -nmr), $(date -u +%FT%TZ))"

# 1. The PCIe device.
if command -v lspci >/dev/null 2>&1; then
  if lspci -n 2>/dev/null | grep -qi '1e60:2864'; then
    pass "PCIe: Hailo-8 (1e60:2864) present: $(lspci -d 1e60: 2>/dev/null | head -1)"
    speed="$(lspci -vv -d 1e60: 2>/dev/null | grep -m1 'LnkSta:' | sed 's/^[[:space:]]*//')"
    [[ -n "$speed" ]] && info "link: $speed (Gen 2 x1 by default on a Pi 5; Gen 3 with dtparam=pciex1_gen=3)"
  else
    fail "PCIe: no Hailo device (1e60:2864) in lspci; check the M.2 HAT seating and its ribbon cable"
  fi
else
  skip "PCIe: lspci not installed (apt-get install pciutils)"
fi

# 2. The device node.
if [[ -e /dev/hailo0 ]]; then
  if [[ -r /dev/hailo0 && -w /dev/hailo0 ]]; then
    pass "/dev/hailo0 exists and is read/writable by $(id -un) ($(stat -c '%A %U:%G' /dev/hailo0))"
  else
    fail "/dev/hailo0 exists but $(id -un) cannot open it read/write ($(stat -c '%A %U:%G' /dev/hailo0)); HailoRT's udev rule makes it 0666"
  fi
else
  fail "/dev/hailo0 missing: the hailo_pci driver is not loaded or found no device"
fi
ls /sys/class/hailo_chardev/ >/dev/null 2>&1 && info "hailo_chardev: $(ls /sys/class/hailo_chardev/ | tr '\n' ' ')"

# 3. Driver version.
driver=""
if [[ -r /sys/module/hailo_pci/version ]]; then
  driver="$(tr -d '[:space:]' </sys/module/hailo_pci/version)"
  pass "driver: hailo_pci $driver"
else
  fail "driver: /sys/module/hailo_pci/version not found (hailo_pci not loaded: modprobe hailo_pci, or install hailort-pcie-driver)"
fi

# 4. Library.
lib=""
for d in /usr/lib /usr/lib/aarch64-linux-gnu /usr/local/lib; do
  for f in "$d"/libhailort.so.4.*; do [[ -e "$f" ]] && lib="$f"; done
done
[[ -n "${HAILORT_LIBRARY:-}" ]] && lib="$HAILORT_LIBRARY"
libver=""
if [[ -n "$lib" ]]; then
  libver="$(basename "$(readlink -f "$lib")" | sed -n 's/^libhailort\.so\.//p')"
  minor="$(echo "$libver" | cut -d. -f2)"
  if [[ "$libver" == 4.* ]] && [[ " $SUPPORTED_MINORS " == *" $minor "* ]]; then
    pass "library: $lib (HailoRT $libver, within 4.21-4.23)"
  else
    fail "library: $lib is HailoRT $libver; spark-edge's bindings need 4.21-4.23 (Hailo-8 is only supported by HailoRT 4.x)"
  fi
  if [[ -n "$driver" && -n "$libver" && "$driver" != "$libver" ]]; then
    fail "driver $driver and library $libver differ: HailoRT refuses a mismatch (HAILO_INVALID_DRIVER_VERSION); install matching versions"
  elif [[ -n "$driver" && -n "$libver" ]]; then
    pass "driver and library versions match ($driver)"
  fi
else
  fail "library: no libhailort.so.4.* in /usr/lib, /usr/lib/aarch64-linux-gnu, /usr/local/lib (install the hailort package)"
fi

# 5. hailortcli's own view.
if command -v hailortcli >/dev/null 2>&1; then
  info "hailortcli: $(hailortcli --version 2>&1 | head -1)"
  if out="$(timeout 30 hailortcli fw-control identify 2>&1)"; then
    pass "hailortcli fw-control identify"
    echo "$out" | sed 's/^/      /'
  else
    fail "hailortcli fw-control identify failed:"
    echo "$out" | sed 's/^/      /'
  fi
else
  skip "hailortcli not installed (comes with the hailort package)"
fi

# 6. spark-edge's own probe (the same code path sparkd uses).
SPARKCTL_BIN="$(find_bin sparkctl "${SPARKCTL:-}")"
SPARKD_BIN="$(find_bin sparkd "${SPARKD:-}")"
probed=0
for sub in hailo-probe doctor; do
  if has_subcommand "$SPARKD_BIN" "$sub"; then
    if out="$(timeout 60 "$SPARKD_BIN" "$sub" 2>&1)"; then pass "sparkd $sub"; else fail "sparkd $sub"; fi
    echo "$out" | sed 's/^/      /'
    probed=1
    break
  fi
done
if has_subcommand "$SPARKCTL_BIN" engine; then
  if out="$(timeout 10 "$SPARKCTL_BIN" engine 2>&1)"; then
    pass "sparkctl engine (running daemon's view)"
    echo "$out" | sed 's/^/      /'
    echo "$out" | grep -qi hailo || warn "the running daemon does not report the Hailo engine active"
  else
    skip "sparkctl engine: no running sparkd to ask ($(echo "$out" | head -1))"
  fi
  probed=1
fi
[[ $probed == 1 ]] || skip "spark-edge probe: no sparkd/sparkctl build found (cargo build --release, or set SPARKD/SPARKCTL)"

# 7. Throughput of the demo model's HEF against the CPU path.
hef="${HEF:-$ROOT/models/centerface.hef}"
hailo_fps=""
if [[ ! -f "$hef" ]]; then
  skip "FPS: no HEF at $hef (set HEF=...; docs/hailo.md says where one comes from)"
elif ! command -v hailortcli >/dev/null 2>&1; then
  skip "FPS: hailortcli not installed"
else
  info "benchmarking $hef for ${SECONDS_PER_RUN}s per mode with hailortcli benchmark"
  if out="$(timeout $((SECONDS_PER_RUN * 4 + 60)) hailortcli benchmark "$hef" --time-to-run "$SECONDS_PER_RUN" 2>&1)"; then
    # "FPS (hw_only) = N" and "(streaming) = N": streaming includes host transfers, as sparkd sees them.
    hailo_fps="$(echo "$out" | grep -Ei 'streaming' | grep -Eo '[0-9]+(\.[0-9]+)?' | tail -1)"
    [[ -n "$hailo_fps" ]] || hailo_fps="$(echo "$out" | grep -Ei 'fps' | grep -Eo '[0-9]+(\.[0-9]+)?' | tail -1)"
    echo "$out" | grep -Ei 'fps|latency|streaming' | sed 's/^/      /'
    if [[ -n "$hailo_fps" ]]; then pass "Hailo-8: $hef at $hailo_fps FPS (streaming)"; else warn "Hailo-8 benchmark finished but printed no FPS"; fi
  else
    fail "hailortcli benchmark $hef failed:"
    echo "$out" | tail -10 | sed 's/^/      /'
  fi
fi
cpu_fps=""
if [[ -n "$hailo_fps" ]]; then
  if command -v cargo >/dev/null 2>&1 && [[ -f "$ROOT/benches/onnx_path.rs" && -f "$ROOT/models/centerface.onnx" ]]; then
    info "measuring the CPU path (cargo bench --bench onnx_path; builds first, can take minutes)"
    if out="$(cd "$ROOT" && cargo bench --bench onnx_path 2>/dev/null)"; then
      cpu_fps="$(echo "$out" | grep -Eo '[0-9]+(\.[0-9]+)? fps' | tail -1 | cut -d' ' -f1)"
      echo "$out" | tail -3 | sed 's/^/      /'
    fi
  fi
  if [[ -n "$cpu_fps" ]]; then
    ratio="$(awk -v h="$hailo_fps" -v c="$cpu_fps" 'BEGIN { if (c > 0) printf "%.1f", h / c; else print "n/a" }')"
    pass "Hailo-8 $hailo_fps FPS vs CPU $cpu_fps FPS (x$ratio)"
    awk -v h="$hailo_fps" -v c="$cpu_fps" 'BEGIN { exit !(h > c) }' ||
      fail "the Hailo-8 is not faster than the CPU: check the PCIe link and that the HEF was compiled for hailo8"
  else
    skip "CPU comparison: no cargo/source tree or CPU benchmark output here"
  fi
fi

# 8. A Model Zoo detection HEF (on-chip NMS, UINT8 input) next to the CPU model, on the demo photos.
if [[ -z "$ZOO_HEF" ]]; then
  skip "Model Zoo HEF: none given (tests/hardware/hailo.sh yolov8s.hef; see the header for where to get one)"
elif [[ ! -f "$ZOO_HEF" ]]; then
  fail "Model Zoo HEF: $ZOO_HEF does not exist"
else
  photos_bin="$ROOT/target/release/examples/hailo_photos"
  if command -v cargo >/dev/null 2>&1 && [[ -f "$ROOT/examples/hailo_photos.rs" ]]; then
    info "building examples/hailo_photos.rs (cargo build --release --example hailo_photos; can take minutes)"
    (cd "$ROOT" && cargo build --release --example hailo_photos >/dev/null 2>&1) || photos_bin=""
  fi
  if [[ -z "$photos_bin" || ! -x "$photos_bin" ]]; then
    skip "Model Zoo HEF: examples/hailo_photos could not be built here (cargo and the source tree are needed)"
  elif out="$(timeout $((SECONDS_PER_RUN * 2 + 120)) "$photos_bin" --hef "$ZOO_HEF" \
    --cpu-manifest "$ROOT/models/nanodet.toml" --photos "$ROOT/models/demo" --seconds "$SECONDS_PER_RUN" 2>&1)"; then
    echo "$out" | sed 's/^/      /'
    pass "Model Zoo HEF $ZOO_HEF ran on the demo photos next to the CPU model"
    # Columns are separated by two or more spaces: photo, hailo-8, cpu.
    echo "$out" | awk -F'  +' '$1 == "astronaut.png" && $2 ~ /person/ { found = 1 } END { exit !found }' ||
      warn "the HEF found no person on astronaut.png: compare its labels with the CPU column above"
  else
    fail "Model Zoo HEF $ZOO_HEF:"
    echo "$out" | tail -10 | sed 's/^/      /'
  fi
fi

echo
if ((failures)); then
  echo "RESULT: FAIL ($failures check(s) failed)"
  exit 1
fi
echo "RESULT: PASS"
