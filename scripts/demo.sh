#!/usr/bin/env bash
# Installs everything, builds the release binaries and leaves sparkd running
# the built-in demo configuration in the background, against a local
# Mosquitto (started here if nothing listens on 127.0.0.1:1883).
#
#   scripts/demo.sh          install, build, start
#   scripts/demo.sh stop     stop the demo's sparkd (and the broker it started)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p var

stop() {
  for f in var/sparkd.pid var/mosquitto.pid; do
    if [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; then
      kill -TERM "$(cat "$f")" && echo "stopped $(basename "$f" .pid) ($(cat "$f"))"
    fi
    rm -f "$f"
  done
}

if [[ "${1:-}" == stop ]]; then stop; exit 0; fi

scripts/setup.sh
echo "[demo] building release binaries (first build takes several minutes)"
cargo build --release --locked --bin sparkd --bin sparkctl

if [[ $(id -u) == 0 ]]; then
  ln -sf "$ROOT/target/release/sparkd" /usr/local/bin/sparkd
  ln -sf "$ROOT/target/release/sparkctl" /usr/local/bin/sparkctl
fi

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
if ! broker_up; then
  echo "[demo] starting mosquitto on 127.0.0.1:1883"
  cat > var/mosquitto.conf <<CONF
listener 1883 127.0.0.1
allow_anonymous true
max_queued_messages 0
$( [[ $(id -u) == 0 ]] && echo "user root" )
CONF
  mosquitto -c var/mosquitto.conf > var/mosquitto.log 2>&1 &
  echo $! > var/mosquitto.pid
  for _ in $(seq 50); do broker_up && break; sleep 0.1; done
fi

if [[ -s var/sparkd.pid ]] && kill -0 "$(cat var/sparkd.pid)" 2>/dev/null; then
  kill -TERM "$(cat var/sparkd.pid)"; sleep 1
fi
nohup target/release/sparkd run > var/sparkd.log 2>&1 &
echo $! > var/sparkd.pid
for _ in $(seq 100); do [[ -S var/sparkd.sock ]] && break; sleep 0.1; done
if ! kill -0 "$(cat var/sparkd.pid)" 2>/dev/null; then
  echo "[demo] sparkd failed to start:" >&2; cat var/sparkd.log >&2; exit 1
fi
sleep 2
target/release/sparkctl --socket var/sparkd.sock status
cat <<MSG

sparkd is running the demo (pid $(cat var/sparkd.pid), log var/sparkd.log).
  watch records:   mosquitto_sub -t 'spark/#' -v
  status:          sparkctl status            (or: sparkctl status --json)
  stop:            scripts/demo.sh stop
MSG
