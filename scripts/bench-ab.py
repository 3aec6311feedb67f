#!/usr/bin/env python3
"""A/B of the /v1 hot paths: two daemons, one client, the same run.

    scripts/bench-ab.py BEFORE_BINARY [AFTER_BINARY] [--rounds N]
        [--before-env K=V]... [--after-env K=V]...

One binary with a setting on one side only (e.g. the cost of disk limits:
`scripts/bench-ab.py target/release/spinup --before-env SPINUP_DISK_LIMITS=off`)
compares the setting in the same run.

Starts `BEFORE serve` and `AFTER serve` (default: target/release/spinup)
side by side, each on its own data dir, socket and cgroup parent, and
measures against both, alternating which goes first each round:

- create -> first exec: POST /v1/sandboxes (busybox, container driver),
  then POST .../exec of /bin/true, timed together (the sandbox is removed
  afterwards, untimed);
- exec round trip: POST .../exec of /bin/true on one sandbox over a
  keep-alive connection.

The client is this script for both daemons, so its own cost is the same on
both sides; only the daemon differs. Prints p50/p95 per side and the ratio
after/before. Run as root (it runs real sandboxes). It removes everything it
made: sandboxes, daemons, their nftables table, cgroup parents, data dirs.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def call(conn, method, path, body=None):
    data = None if body is None else json.dumps(body)
    headers = {"content-type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    raw = r.read()
    return r.status, (json.loads(raw) if raw else None)


class Side:
    def __init__(self, name, binary, work, env):
        self.name, self.binary = name, binary
        self.dir = os.path.join(work, name)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "spinup.sock")
        self.cgroup = f"spinup-ab-{os.getpid()}-{name}"
        os.makedirs(self.data)
        self.log = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", self.data, "--socket", self.sock, "--cgroup-parent", self.cgroup],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
            env={**os.environ, **dict(kv.split("=", 1) for kv in env)})
        deadline = time.time() + 300
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{name}: the daemon did not start; see {self.log.name}")
            time.sleep(0.1)
        self.conn = UnixHTTP(self.sock)
        # The first create builds the busybox environment.
        print(f"{name}: preparing (busybox environment)", file=sys.stderr)
        sb = self.create()
        self.remove(sb)
        self.hot = self.create()

    def create(self):
        st, v = call(self.conn, "POST", "/v1/sandboxes", {"env": "busybox", "driver": "container"})
        if st != 201:
            raise SystemExit(f"{self.name}: create answered {st}: {v}")
        return v["id"]

    def exec_true(self, sid):
        st, v = call(self.conn, "POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["/bin/true"]})
        if st != 200 or v.get("exit_code") != 0:
            raise SystemExit(f"{self.name}: exec answered {st}: {v}")

    def remove(self, sid):
        st, v = call(self.conn, "DELETE", f"/v1/sandboxes/{sid}?force=true")
        if st != 204:
            raise SystemExit(f"{self.name}: remove answered {st}: {v}")

    def create_exec(self, n):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            sid = self.create()
            self.exec_true(sid)
            out.append(time.perf_counter() - t)
            self.remove(sid)
        return out

    def exec_rtt(self, n):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            self.exec_true(self.hot)
            out.append(time.perf_counter() - t)
        return out

    def close(self):
        try:
            st, v = call(self.conn, "GET", "/v1/sandboxes")
            for sb in v or []:
                call(self.conn, "DELETE", f"/v1/sandboxes/{sb['id']}?force=true")
        except Exception as e:  # the daemon may be gone; clean up the rest anyway
            print(f"{self.name}: removing sandboxes: {e}", file=sys.stderr)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        pool = os.path.join(self.data, "net-pool")
        if os.path.exists(pool):
            subprocess.run(["nft", "delete", "table", "inet", f"spinup_{open(pool).read().strip()}"],
                           capture_output=True)
        for root in ["/sys/fs/cgroup"] + [e.path for e in os.scandir("/sys/fs/cgroup") if e.is_dir()]:
            try:
                os.rmdir(os.path.join(root, self.cgroup))
            except OSError:
                pass


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default="target/release/spinup")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--creates", type=int, default=10, help="create -> first exec per side per round")
    ap.add_argument("--execs", type=int, default=200, help="exec round trips per side per round")
    ap.add_argument("--before-env", action="append", default=[], help="K=V for the before daemon")
    ap.add_argument("--after-env", action="append", default=[], help="K=V for the after daemon")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it runs real sandboxes")
    work = tempfile.mkdtemp(prefix="spinup-ab-")
    sides = []
    try:
        sides = [
            Side("before", os.path.abspath(a.before), work, a.before_env),
            Side("after", os.path.abspath(a.after), work, a.after_env),
        ]
        res = {s.name: {"create_exec": [], "exec": []} for s in sides}
        for r in range(a.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                s.exec_rtt(10)  # warm-up
                res[s.name]["exec"] += s.exec_rtt(a.execs)
                res[s.name]["create_exec"] += s.create_exec(a.creates)
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
        out = {}
        for k in ["create_exec", "exec"]:
            b, f = res["before"][k], res["after"][k]
            out[k] = {
                "before_ms": {"p50": pct(b, 0.5), "p95": pct(b, 0.95), "n": len(b)},
                "after_ms": {"p50": pct(f, 0.5), "p95": pct(f, 0.95), "n": len(f)},
                "ratio_after_before_p50": statistics.median(f) / statistics.median(b),
            }
        print(json.dumps(out, indent=2))
    finally:
        for s in sides:
            s.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
