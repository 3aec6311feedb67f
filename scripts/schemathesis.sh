#!/usr/bin/env bash
# Runs schemathesis (property-based API tests from /v1/openapi.json, its
# default checks, stateful phase included) against a private daemon:
#
#   sudo scripts/schemathesis.sh [SECONDS]      (default 120)
#
# The daemon gets its own data dir, socket, TCP port and cgroup parent, the
# busybox environment (so generated creates can succeed) and an API key
# (with SPINUP_ST_URL and SPINUP_API_KEY set, the daemon there is used
# instead: the test suite's, crates/cli/tests/schemathesis.rs). The
# streaming-forever and WebSocket operations (WatchFiles, ExecWs,
# AttachWs) are left out, since schemathesis reads a body to its end, and so
# is BuildEnvironment (it runs mmdebstrap for minutes; the recipes have
# their own tests). scripts/schemathesis.toml says which answers the
# document cannot describe are accepted, and why. At the
# end every sandbox it made is removed and the daemon stopped, and the
# schemathesis summary is the last thing printed.
# schemathesis comes from scripts/install-python-tools.sh's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
venv=${SPINUP_PY_VENV:-/var/tmp/spinup-py/venv}
st="$venv/bin/st"
[ -x "$st" ] || { echo "schemathesis is missing: run scripts/install-python-tools.sh" >&2; exit 1; }

# The one schemathesis invocation, against $1 (a daemon's TCP listener)
# with key $2.
run_st() {
    "$st" --config-file scripts/schemathesis.toml run "$1/v1/openapi.json" -H "Authorization: Bearer $2" \
        --max-time "$secs" --request-timeout 120 -w 2 \
        --exclude-operation-id BuildEnvironment --exclude-operation-id WatchFiles \
        --exclude-operation-id ExecWs --exclude-operation-id AttachWs
}

# The test suite's daemon (crates/cli/tests/schemathesis.rs) brings its
# own: SPINUP_ST_URL and SPINUP_API_KEY name it, and it has busybox.
if [ -n "${SPINUP_ST_URL:-}" ]; then
    run_st "$SPINUP_ST_URL" "${SPINUP_API_KEY:?SPINUP_API_KEY is the key of that daemon}"
    exit
fi

[ "$(id -u)" = 0 ] || { echo "needs root (it runs real sandboxes): sudo $0" >&2; exit 1; }
spinup=${SPINUP_BIN:-${CARGO_TARGET_DIR:-target}/release/spinup}
[ -x "$spinup" ] || { echo "$spinup is missing: cargo build --release" >&2; exit 1; }

dir=$(mktemp -d /tmp/spinup-schemathesis.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cgroup="spinup-st-$$"
export SPINUP_HOST="$dir/s.sock"
SPINUP_API_KEY=$key SPINUP_RECIPE_CACHE=${SPINUP_RECIPE_CACHE:-/var/tmp/spinup-test-recipes} \
    "$spinup" serve --data-dir "$dir/data" --socket "$dir/s.sock" --tcp "127.0.0.1:$port" \
    --cgroup-parent "$cgroup" >"$dir/daemon.log" 2>&1 &
daemon=$!
cleanup() {
    if kill -0 "$daemon" 2>/dev/null; then
        ids=$("$spinup" --json ls 2>/dev/null | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))' || true)
        # shellcheck disable=SC2086 # one word per id
        [ -z "$ids" ] || "$spinup" rm --force $ids >/dev/null 2>&1 || true
        kill -INT "$daemon"
        wait "$daemon" || true
    fi
    if [ -f "$dir/data/net-pool" ]; then nft delete table inet "spinup_$(cat "$dir/data/net-pool")" 2>/dev/null || true; fi
    for cg in /sys/fs/cgroup/"$cgroup" /sys/fs/cgroup/*/"$cgroup"; do [ ! -d "$cg" ] || rmdir "$cg" 2>/dev/null || true; done
    if grep -q " $dir/" /proc/self/mountinfo; then
        echo "schemathesis: $dir keeps a mount; left in place" >&2
    else
        rm -rf "$dir"
    fi
}
trap cleanup EXIT
for _ in $(seq 120); do [ -S "$dir/s.sock" ] && break; sleep 0.5; done
"$spinup" env build busybox | tail -1
set +e
run_st "http://127.0.0.1:$port" "$key"
rc=$?
set -e
exit $rc
