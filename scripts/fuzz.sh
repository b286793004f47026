#!/usr/bin/env bash
# Coverage-guided fuzzing of spark-edge's parsers with cargo-fuzz/libFuzzer
# (issue 15, item 6). Targets are in fuzz/fuzz_targets/, seeds in
# fuzz/corpus/<target>/; docs/fuzzing.md explains each target.
#
#   scripts/fuzz.sh short              every target, SHORT_RUNS inputs each (default 20000)
#                                      over a scratch copy of the seed corpus; exit 1 on any crash
#   scripts/fuzz.sh long [RUNS]        every target RUNS inputs (default 10000000), one at a time,
#                                      corpus kept in fuzz/work/<target>/
#   scripts/fuzz.sh run TARGET [RUNS]  one target
#   scripts/fuzz.sh build              build the targets only
#
# One fuzzer process at a time: the machines have 2 cores. The toolchain is
# stable, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags. Crashes
# land in fuzz/artifacts/<target>/; reproduce with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_FUZZ_VERSION=0.13.2
# The parsers are safe Rust, so no sanitizer (twice the speed); debug
# assertions make integer overflow a crash instead of a silent wrap.
BUILD_FLAGS=(--sanitizer none --debug-assertions --release)
TARGETS=(control_frame config config_runtime update_envelope update_manifest update_chunk model_pack model_manifest mqtt_dispatch diag_request decode)
BIN_DIR="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release"
LIBFUZZER_FLAGS=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

ensure_cargo_fuzz() {
    if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io" >&2
        cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
    fi
}

build() {
    # FUZZ_NO_BUILD=1 runs the binaries already built (a campaign of several
    # `run`s while others edit the tree).
    [ "${FUZZ_NO_BUILD:-0}" = 1 ] && [ -d "$BIN_DIR" ] && return 0
    ensure_cargo_fuzz
    (cd fuzz && cargo fuzz build "${BUILD_FLAGS[@]}")
}

# run_one TARGET RUNS WORKDIR: prints one summary line; returns libFuzzer's status.
run_one() {
    local target=$1 runs=$2 work=$3
    local seeds="$ROOT/fuzz/corpus/$target" log="$ROOT/fuzz/target/fuzz-$target.log"
    mkdir -p "$work" "$ROOT/fuzz/artifacts/$target"
    local start end status=0
    start=$(date +%s.%N)
    "$BIN_DIR/$target" "${LIBFUZZER_FLAGS[@]}" -runs="$runs" \
        -artifact_prefix="$ROOT/fuzz/artifacts/$target/" "$work" "$seeds" >"$log" 2>&1 || status=$?
    end=$(date +%s.%N)
    local execs corpus
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
    corpus=$(find "$work" -type f | wc -l)
    printf 'fuzz: %-16s runs=%-10s secs=%-8.1f corpus=%-6s status=%s\n' \
        "$target" "${execs:-?}" "$(awk "BEGIN{print $end - $start}")" "$corpus" \
        "$([ $status -eq 0 ] && echo ok || echo "CRASH (exit $status), see $log")"
    if [ $status -ne 0 ]; then
        grep -E 'panicked at|ERROR: libFuzzer|Test unit written' "$log" | head -5 >&2 || true
    fi
    return $status
}

mode=${1:-short}
case "$mode" in
build)
    build
    ;;
short)
    build
    runs=${SHORT_RUNS:-20000}
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    failed=()
    for t in "${TARGETS[@]}"; do
        run_one "$t" "$runs" "$scratch/$t" || failed+=("$t")
    done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "fuzz: crashes in: ${failed[*]}" >&2
        exit 1
    fi
    echo "fuzz: ${#TARGETS[@]} targets, $runs inputs each, no crash"
    ;;
long)
    build
    runs=${2:-10000000}
    failed=()
    for t in "${TARGETS[@]}"; do
        run_one "$t" "$runs" "$ROOT/fuzz/work/$t" || failed+=("$t")
    done
    [ ${#failed[@]} -eq 0 ] || { echo "fuzz: crashes in: ${failed[*]}" >&2; exit 1; }
    ;;
run)
    target=${2:?usage: scripts/fuzz.sh run TARGET [RUNS]}
    build
    run_one "$target" "${3:-10000000}" "$ROOT/fuzz/work/$target"
    ;;
*)
    echo "usage: scripts/fuzz.sh short | long [RUNS] | run TARGET [RUNS] | build" >&2
    exit 2
    ;;
esac
