#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the conformance suite (per driver)
# and the lifecycle tests, as root against real runc, overlayfs and cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "the test suite needs root (it runs real sandboxes): sudo $0" >&2
    exit 1
fi
scripts/install-deps.sh
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
exec cargo nextest run --release --no-fail-fast --failure-output final "$@"
