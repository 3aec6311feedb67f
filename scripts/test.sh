#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints (cargo fmt --check,
# clippy -D warnings), unit tests, the conformance suite (per driver), the
# lifecycle tests and the fuzz targets (a minute each), as root against
# real runc, overlayfs and cgroups; then a short chaos soak (the daemon
# killed with -9 under load); then checks that the suite left the host as it found it (no process,
# namespace, link, nftables table, mount, cgroup or data dir of a test
# daemon). The last line printed is the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "the test suite needs root (it runs real sandboxes): sudo $0" >&2
    exit 1
fi
scripts/install-deps.sh
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# Formatting and lints first: a warning fails the run (the lint table is
# [workspace.lints] in Cargo.toml; the toolchain is rust-toolchain.toml's).
echo "--- cargo fmt --check"
cargo fmt --all -- --check
echo "--- cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets are built here, so the suite's fuzz test (a minute
# per target) runs them without a build inside its time.
scripts/fuzz.sh build
before=$(mktemp)
log=$(mktemp)
trap 'rm -f "$before" "$log"' EXIT
scripts/host-check.sh snapshot "$before"
set +e
cargo nextest run --release --no-fail-fast --failure-output final "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The chaos soak's short variant, alone on the host (its leak check
# compares the whole host): 10 sandboxes, 4 kills -9 of the daemon, a
# minute of load. The long run is `scripts/soak.py` (BENCHMARKS.md).
if [ -z "${SPINUP_SKIP_SOAK:-}" ] && [ "$#" = 0 ]; then
    echo "--- chaos soak (short)"
    timeout 900 scripts/soak.py --sandboxes 10 --kills 4 --minutes 1 --drivers container,gvisor --workers 4 \
        --bin "${CARGO_TARGET_DIR:-target}/release/spinup"
    soak=$?
    if [ "$soak" != 0 ]; then
        echo "chaos soak failed (exit $soak)"
        [ "$rc" = 0 ] && rc=1
    fi
fi
scripts/host-check.sh compare "$before"
check=$?
set -e
summary=$(grep -E '^ *Summary \[' "$log" | tail -1)
echo "${summary:-no test summary (nextest exit code $rc)}"
if [ "$rc" != 0 ]; then exit "$rc"; fi
exit "$check"
