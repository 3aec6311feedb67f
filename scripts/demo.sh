#!/usr/bin/env bash
# Brings Spinup up on its embedded defaults and runs an example agent
# session end to end: create a Debian sandbox, run Python in it, write and
# read a file, diff, snapshot and fork it, remove it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "spinup runs sandboxes as root: sudo $0" >&2
    exit 1
fi
scripts/install-deps.sh
cargo build --release
spinup=${CARGO_TARGET_DIR:-target}/release/spinup

started=""
if ! $spinup ls >/dev/null 2>&1; then
    echo "== starting the daemon (data in /var/lib/spinup, log in /var/log/spinup.log)"
    nohup $spinup serve >>/var/log/spinup.log 2>&1 &
    started=$!
    # The first start downloads the microVM guest kernel and boots probe
    # guests to pick drivers and accelerators: allow it a couple of minutes.
    for _ in $(seq 1200); do $spinup ls >/dev/null 2>&1 && break; sleep 0.1; done
fi
trap '[ -n "$started" ] && kill "$started"' EXIT

$spinup drivers
echo "== create a Debian sandbox (the first run builds the environment)"
id=$($spinup create --env debian --memory 1024 --label demo=quickstart)
echo "sandbox $id"
echo "== run Python in it"
$spinup exec "$id" -- python3 -c 'import platform, socket; print("python", platform.python_version(), "on", socket.gethostname())'
echo "== write a file into it, read it back from inside and out"
printf 'hello from the host\n' > /tmp/spinup-demo.txt
$spinup cp /tmp/spinup-demo.txt "$id:/root/notes.txt"
$spinup exec "$id" -w /root -- python3 -c 'open("answer.txt", "w").write(open("notes.txt").read().upper())'
$spinup cp "$id:/root/answer.txt" -
$spinup ls
echo "== what the agent changed, a snapshot, and a fork that branches from it"
$spinup diff "$id"
snap=$($spinup snapshot "$id" --name "demo-$id")
child=$($spinup fork "$id" --count 1)
$spinup exec "$child" -- sh -c 'echo "fork $(hostname) sees: $(cat /root/answer.txt)"'
$spinup rm -f "$child" >/dev/null
echo "== a secret it can read but the API never returns, and a port the host can reach"
printf 'demo-token-%s' "$$" | $spinup secret set DEMO_TOKEN
$spinup secret attach "$id" DEMO_TOKEN
$spinup exec "$id" -- sh -c 'echo "/run/secrets: $(ls -l /run/secrets | tail -1)"'
$spinup exec -d "$id" -- python3 -m http.server 8000 --bind 127.0.0.1 --directory /root >/dev/null
sleep 1
port=$($spinup port "$id" 8000 --public)
curl -s "$port/answer.txt"
echo "== networking is off unless asked for: names do not resolve, nothing leaves"
$spinup exec "$id" -- python3 -c 'import socket
try: socket.getaddrinfo("pypi.org", 443); print("resolved?!")
except OSError as e: print("refused at once:", e)'
$spinup net set "$id" --mode allow --allow pypi.org
$spinup exec "$id" -- python3 -c 'import socket; print("allow pypi.org:", socket.getaddrinfo("pypi.org", 443)[0][4][0])'
echo "== remove it"
$spinup rm -f "$id"
$spinup secret rm DEMO_TOKEN
$spinup snapshot rm "$snap" >/dev/null
if $spinup drivers --json | python3 -c 'import json,sys; sys.exit(0 if any(d["driver"] == "microvm" and d["available"] for d in json.load(sys.stdin)) else 1)'; then
    echo "== the same model in a microVM with its own kernel"
    vm=$($spinup create --driver microvm --label demo=quickstart)
    $spinup exec "$vm" -- sh -c 'echo "kernel $(uname -r) on $(hostname)"'
    $spinup rm -f "$vm"
fi
echo "demo finished"
