#!/usr/bin/env bash
# The cargo-fuzz targets of fuzz/ (frame codec, layer tars, DNS resolver,
# egress proxy parsers):
#
#   scripts/fuzz.sh build                     build them all
#   scripts/fuzz.sh run [SECONDS] [TARGET…]   run each for SECONDS (60)
#
# Needs Rust nightly (sanitizer coverage) and cargo-fuzz; both are
# installed when missing. Builds go to $SPINUP_FUZZ_TARGET
# (/var/tmp/spinup-fuzz-target), outside the clone. Each run starts from
# the seeds and regression inputs in fuzz/corpus/TARGET and writes what it
# finds to a scratch corpus (/var/tmp/spinup-fuzz/corpus/TARGET), never
# into the repo. A crash, leak, timeout or out-of-memory is written to
# /var/tmp/spinup-fuzz/artifacts/TARGET/ and fails the run: fix it, then
# add the input to fuzz/corpus/TARGET as a regression test.
#
# The per-target table (runs, seconds, crashes) is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
secs=${2:-60}
shift $(($# > 2 ? 2 : $#))
targets=("$@")
((${#targets[@]})) || targets=(frame layer_tar dns proxy)
export CARGO_TARGET_DIR=${SPINUP_FUZZ_TARGET:-/var/tmp/spinup-fuzz-target}
work=${SPINUP_FUZZ_WORK:-/var/tmp/spinup-fuzz}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# No sanitizer: the code under test is safe Rust, and AddressSanitizer
# would halve the runs for it; debug assertions catch overflows.
flags=(-O --debug-assertions --sanitizer none --fuzz-dir fuzz)
echo "--- fuzz: building ${targets[*]}"
for t in "${targets[@]}"; do cargo +nightly fuzz build "${flags[@]}" "$t"; done
[ "$mode" = build ] && exit 0

rows=()
failed=0
for t in "${targets[@]}"; do
    corpus=$work/corpus/$t
    art=$work/artifacts/$t
    mkdir -p "$corpus" "$art"
    log=$(mktemp)
    echo "--- fuzz: $t for ${secs}s"
    set +e
    cargo +nightly fuzz run "${flags[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$art/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
    found=$(grep -cE '^(==[0-9]+== ERROR|thread .* panicked|SUMMARY: libFuzzer)' "$log" || true)
    if [ "$rc" != 0 ]; then
        failed=1
        echo "fuzz: $t failed (exit $rc); the last of its output:"
        tail -40 "$log"
        ls -1 "$art" | sed 's/^/  artifact: /'
    fi
    rows+=("$(printf '%-10s %10s runs  %4ss  %s crash(es)' "$t" "${runs:-?}" "$secs" "$found")")
    rm -f "$log"
done
echo "--- fuzz summary"
printf '%s\n' "${rows[@]}"
exit "$failed"
