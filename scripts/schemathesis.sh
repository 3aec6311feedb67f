#!/usr/bin/env bash
# Runs schemathesis (property-based API tests from /v1/openapi.json, its
# default checks, stateful phase included) against a private daemon:
#
#   sudo scripts/schemathesis.sh [SECONDS]      (default 120)
#
# The daemon gets its own data dir, socket, TCP port and cgroup parent, the
# busybox environment (so generated creates can succeed) and an API key;
# the streaming-forever and WebSocket operations (WatchFiles, ExecWs,
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
[ "$(id -u)" = 0 ] || { echo "needs root (it runs real sandboxes): sudo $0" >&2; exit 1; }
spinup=${SPINUP_BIN:-target/release/spinup}
[ -x "$spinup" ] || { echo "$spinup is missing: cargo build --release" >&2; exit 1; }

dir=$(mktemp -d /tmp/spinup-schemathesis.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SPINUP_HOST="$dir/s.sock"
SPINUP_API_KEY=$key SPINUP_RECIPE_CACHE=${SPINUP_RECIPE_CACHE:-/var/tmp/spinup-test-recipes} \
    "$spinup" serve --data-dir "$dir/data" --socket "$dir/s.sock" --tcp "127.0.0.1:$port" \
    --cgroup-parent "spinup-st-$$" >"$dir/daemon.log" 2>&1 &
daemon=$!
cleanup() {
    if kill -0 "$daemon" 2>/dev/null; then
        for id in $("$spinup" --json ls 2>/dev/null | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))'); do
            "$spinup" rm --force "$id" >/dev/null 2>&1 || true
        done
        kill -INT "$daemon"
        wait "$daemon" || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 120); do [ -S "$dir/s.sock" ] && break; sleep 0.5; done
"$spinup" env build busybox | tail -1
set +e
"$st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/v1/openapi.json" -H "Authorization: Bearer $key" \
    --max-time "$secs" --request-timeout 120 -w 2 \
    --exclude-operation-id BuildEnvironment --exclude-operation-id WatchFiles --exclude-operation-id ExecWs --exclude-operation-id AttachWs
rc=$?
set -e
exit $rc
