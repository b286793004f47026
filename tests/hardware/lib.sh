# Sourced by the hardware checks (bash): result lines and finding binaries.
# Needs ROOT (the repository) set by the caller.
failures=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
warn() { printf 'WARN  %s\n' "$*"; }
skip() { printf 'SKIP  %s\n' "$*"; }
info() { printf '      %s\n' "$*"; }

find_bin() { # name, override: the override, else a built binary, else PATH
  if [[ -n "${2:-}" && -x "$2" ]]; then echo "$2"; return; fi
  for c in "$ROOT/target/release/$1" "$ROOT/target/aarch64-unknown-linux-gnu/release/$1" "$ROOT/target/debug/$1" "$(command -v "$1" 2>/dev/null)"; do
    [[ -n "$c" && -x "$c" ]] && { echo "$c"; return; }
  done
}
