#!/usr/bin/env python3
"""Chaos under load: a daemon of its own, killed with -9 while it works.

    sudo scripts/soak.py [--sandboxes 60] [--kills 20] [--minutes 10]
                         [--drivers container,gvisor,microvm] [--bin PATH]

It starts `spinup serve` on a data dir and cgroup parent of its own
(/tmp/spinup-soak-PID, spinup-soak/PID). It creates the sandboxes across
the drivers given (those the daemon declares available). Worker threads
then run a mix of calls until the time is up:
- exec;
- a file written and read back;
- an fs snapshot and its removal;
- a fork and its child's removal;
- pause and resume;
- a network policy change;
- a process list.
Meanwhile the daemon is killed with -9 at random moments, `--kills`
times, each time started again at once.

Every call gets a bounded wait (--call-timeout). It ends in one of these:
- an answer (2xx);
- a clear error: 4xx or 5xx with a JSON {code, message};
- refused while the daemon is down: connect refused or reset, counted
  apart;
- hung: no answer within the bound. Must be 0.

At the end:
- every sandbox made at the start must be running (or paused, where a
  pause was answered and its resume was cut off; it is resumed);
- every file write that was answered must read back whole. "Lost" must
  be 0.
Then everything is removed, the daemon is stopped, and the host is
checked for anything left: mounts, cgroups, network namespaces, links,
nftables tables, processes, loop devices, the data dir. "Leaks" must be
0.

The summary is printed last, one JSON object. The exit status is 1 when
hung, lost or leaks is not 0. Bounded: the load stops at --minutes, and
the cleanup has its own bounds.
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Down(Exception):
    """The daemon was not there (connect refused, reset mid-call)."""


class Hung(Exception):
    """No answer within the bound."""


class Soak:
    def __init__(self, args):
        self.args = args
        self.dir = f"/tmp/spinup-soak-{os.getpid()}"
        self.sock = f"{self.dir}/spinup.sock"
        self.cgroup = f"spinup-soak/{os.getpid()}"
        self.lock = threading.Lock()
        self.daemon = None
        self.stats = {}
        self.kills = 0
        self.hung = []
        self.written = {}  # (sandbox, path) -> bytes, once answered
        self.stop = threading.Event()
        self.fatal = None

    # --- the daemon ---------------------------------------------------
    def start_daemon(self):
        log = open(f"{self.dir}/daemon.log", "ab")
        env = dict(os.environ, SPINUP_LOG="info")
        # The test suite's caches: the guest kernel and the recipes' builds.
        env.setdefault("SPINUP_KERNEL_DIR", "/var/tmp/spinup-test-kernel")
        env.setdefault("SPINUP_RECIPE_CACHE", "/var/tmp/spinup-test-recipes")
        self.daemon = subprocess.Popen(
            [self.args.bin, "serve", "--data-dir", f"{self.dir}/data", "--socket", self.sock,
             "--cgroup-parent", self.cgroup],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.daemon.poll() is not None:
                sys.exit(f"soak: the daemon exited ({self.daemon.returncode}); see {self.dir}/daemon.log")
            try:
                st, _ = self.call("GET", "/v1/drivers", timeout=5, count=False)
                if st == 200:
                    return
            except (Down, Hung):
                pass
            time.sleep(0.2)
        sys.exit("soak: the daemon did not answer within 600 s")

    def kill9(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait()

    # --- calls --------------------------------------------------------
    def call(self, method, path, body=None, raw=None, timeout=None, count=True, kind=None):
        timeout = timeout or self.args.call_timeout
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn = UnixConnection(self.sock, timeout)
        try:
            headers = {"Content-Type": "application/json"} if raw is None and data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError, BrokenPipeError,
                http.client.RemoteDisconnected, http.client.IncompleteRead) as e:
            self.count(kind, "down", count)
            raise Down(str(e))
        except (socket.timeout, TimeoutError):
            self.count(kind, "hung", count)
            if count:
                with self.lock:
                    self.hung.append(f"{method} {path}")
            raise Hung(f"{method} {path}")
        finally:
            conn.close()
        if resp.status < 300:
            self.count(kind, "ok", count)
        else:
            try:
                v = json.loads(payload)
                clear = isinstance(v, dict) and v.get("code") and v.get("message")
            except ValueError:
                clear = False
            self.count(kind, "error" if clear else "unclear", count)
        return resp.status, payload

    def count(self, kind, outcome, really):
        if really and kind:
            with self.lock:
                self.stats.setdefault(kind, {}).setdefault(outcome, 0)
                self.stats[kind][outcome] += 1

    def json_call(self, *a, **kw):
        st, payload = self.call(*a, **kw)
        try:
            return st, json.loads(payload) if payload else None
        except ValueError:
            return st, None

    # --- the load -----------------------------------------------------
    def op(self, sb):
        kind = random.choice(["exec", "exec", "file", "file", "snapshot", "fork", "pause", "network", "ps"])
        base = f"/v1/sandboxes/{sb}"
        if kind == "exec":
            self.call("POST", f"{base}/exec", {"argv": ["sh", "-c", "echo $$; ls / >/dev/null"]}, kind=kind)
        elif kind == "file":
            path = f"/tmp/soak-{random.randrange(1 << 30)}"
            data = os.urandom(random.choice([16, 4096, 200_000]))
            q = urllib.parse.urlencode({"path": path})
            st, _ = self.call("PUT", f"{base}/files?{q}", raw=data, kind=kind)
            if st < 300:
                with self.lock:
                    self.written[(sb, path)] = data
        elif kind == "snapshot":
            st, v = self.json_call("POST", f"{base}/snapshot", {}, kind=kind)
            if st < 300 and v:
                self.call("DELETE", f"/v1/snapshots/{v['id']}", kind="snapshot-rm")
        elif kind == "fork":
            st, v = self.json_call("POST", f"{base}/fork", {"count": 1}, kind=kind)
            if st < 300 and v:
                for c in v.get("children", []):
                    self.call("DELETE", f"/v1/sandboxes/{c['id']}?force=true", kind="fork-rm")
                if v.get("snapshot"):
                    self.call("DELETE", f"/v1/snapshots/{v['snapshot']['id']}", kind="snapshot-rm")
        elif kind == "pause":
            st, _ = self.call("POST", f"{base}/pause", {}, kind=kind)
            if st < 300:
                self.call("POST", f"{base}/resume", {}, kind="resume")
        elif kind == "network":
            mode = random.choice(["none", "allow", "open"])
            self.call("PUT", f"{base}/network", {"mode": mode, "allow": ["example.com"] if mode == "allow" else []},
                      kind=kind)
        else:
            self.call("GET", f"{base}/processes", kind=kind)

    def worker(self, sandboxes, deadline):
        while time.time() < deadline and not self.stop.is_set():
            try:
                self.op(random.choice(sandboxes))
            except Down:
                time.sleep(0.3)  # the daemon is being started again
            except Hung:
                pass

    def killer(self, deadline):
        gaps = sorted(random.uniform(5, max(6, deadline - time.time() - 20)) for _ in range(self.args.kills))
        t0 = time.time()
        for at in gaps:
            while time.time() < t0 + at:
                if self.stop.is_set():
                    return
                time.sleep(0.1)
            self.kill9()
            self.kills += 1
            print(f"soak: kill -9 #{self.kills}", flush=True)
            try:
                self.start_daemon()
            except SystemExit as e:
                # A daemon that cannot start again ends the run.
                self.fatal = str(e)
                self.stop.set()
                return

    # --- the end --------------------------------------------------------
    def host_state(self):
        out = set()
        for cmd, fmt in [(["ip", "netns", "list"], "netns"), (["ip", "-o", "link", "show"], "link"),
                         (["nft", "list", "tables"], "nft")]:
            try:
                text = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            for line in text.splitlines():
                if fmt == "link":
                    line = line.split(": ")[1].split("@")[0] if ": " in line else line
                elif fmt == "netns":
                    line = line.split()[0] if line.split() else line
                out.add(f"{fmt} {line}")
        return out

    def leaks(self, before):
        left = sorted(self.host_state() - before)
        for root, dirs, _ in os.walk("/sys/fs/cgroup"):
            if root.endswith(self.cgroup):
                left.append(f"cgroup {root}: {dirs[:5]}")
            if root.count("/") > 6:
                dirs.clear()
        with open("/proc/self/mountinfo") as f:
            left += [f"mount {l.split()[4]}" for l in f if l.split()[4].startswith(self.dir)]
        losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        left += [f"loop {l}" for l in losetup.splitlines() if self.dir in l]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                cg = open(f"/proc/{pid}/cgroup").read()
            except OSError:
                continue
            if self.dir in cmd or f":/{self.cgroup}/" in cg:
                left.append(f"process {pid}: {cmd[:120]}")
        return left

    def run(self):
        a = self.args
        os.makedirs(self.dir)
        before = self.host_state()
        self.start_daemon()
        _, drivers = self.json_call("GET", "/v1/drivers")
        avail = [d["driver"] for d in drivers if d["available"] and d["driver"] in a.drivers.split(",")]
        if not avail:
            sys.exit(f"soak: none of {a.drivers} is available: {drivers}")
        # MicroVMs are the dearest (TCG here): a sixth of the sandboxes.
        plan = []
        for i in range(a.sandboxes):
            d = "microvm" if "microvm" in avail and i % 6 == 5 else random.choice([x for x in avail if x != "microvm"] or avail)
            plan.append(d)
        print(f"soak: creating {len(plan)} sandboxes on {sorted(set(plan))}", flush=True)
        sandboxes = []
        for d in plan:
            body = {"env": "busybox", "driver": d, "network": {"mode": "allow", "allow": ["example.com"]},
                    "resources": {"memory_mib": 256, "vcpus": 0.5}}
            st, v = self.json_call("POST", "/v1/sandboxes", body, timeout=600, kind="create")
            if st != 201:
                sys.exit(f"soak: create on {d} failed: {st} {v}")
            sandboxes.append(v["id"])
        deadline = time.time() + a.minutes * 60
        print(f"soak: load for {a.minutes} min with {a.workers} workers, {a.kills} kills", flush=True)
        threads = [threading.Thread(target=self.worker, args=(sandboxes, deadline)) for _ in range(a.workers)]
        killer = threading.Thread(target=self.killer, args=(deadline,))
        for t in threads + [killer]:
            t.start()
        for t in threads + [killer]:
            t.join()
        if self.fatal:
            sys.exit(f"{self.fatal} (after {self.kills} kills)")
        # Settled: every sandbox from the start is running, every answered
        # write is there.
        self.kill9()
        self.start_daemon()
        time.sleep(2)
        not_running, lost = [], []
        for sb in sandboxes:
            st, v = self.json_call("GET", f"/v1/sandboxes/{sb}", kind="check")
            state = v.get("state") if isinstance(v, dict) else None
            if state == "paused":
                st, v = self.json_call("POST", f"/v1/sandboxes/{sb}/resume", {}, timeout=300, kind="check")
                state = v.get("state") if isinstance(v, dict) else None
            if state != "running":
                not_running.append(f"{sb}: {state} {v}")
        for (sb, path), data in self.written.items():
            q = urllib.parse.urlencode({"path": path})
            st, got = self.call("GET", f"/v1/sandboxes/{sb}/files?{q}", kind="check")
            if st != 200 or got != data:
                lost.append(f"{sb}:{path} ({st}, {len(got)} of {len(data)} bytes)")
        # Everything goes, the daemon stops, the host is as it was.
        _, listed = self.json_call("GET", "/v1/sandboxes", kind="cleanup")
        for s in listed or []:
            self.call("DELETE", f"/v1/sandboxes/{s['id']}?force=true", timeout=300, kind="cleanup")
        _, snaps = self.json_call("GET", "/v1/snapshots", kind="cleanup")
        for s in snaps or []:
            self.call("DELETE", f"/v1/snapshots/{s['id']}", kind="cleanup")
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(60)
        except subprocess.TimeoutExpired:
            self.kill9()
        time.sleep(2)
        # The daemon's own objects outlive a clean stop by design (they
        # carry sandboxes across restarts): its nftables table and its
        # cgroup parent go here, as the test suite's cleanup removes them;
        # a sandbox's chain or cgroup left inside keeps them, and counts.
        chains_left = []
        try:
            pool = open(f"{self.dir}/data/net-pool").read().strip()
            table = ["table", "inet", f"spinup_{pool}"]
            text = subprocess.run(["nft", "list", *table], capture_output=True, text=True, timeout=30).stdout
            chains_left = [f"nft chain {l.split()[1]}" for l in text.splitlines()
                           if l.strip().startswith("chain ") and re.search(r"[0-9a-f]{12}", l)]
            subprocess.run(["nft", "delete", *table], capture_output=True, timeout=30)
        except (OSError, IndexError):
            pass
        for c in os.listdir("/sys/fs/cgroup"):
            for cg in [os.path.join("/sys/fs/cgroup", c, self.cgroup), os.path.join("/sys/fs/cgroup", self.cgroup)]:
                try:
                    os.rmdir(cg)
                except OSError:
                    pass
        leaks = chains_left + self.leaks(before)
        for l in leaks:
            print(f"soak: left behind: {l}", flush=True)
        for l in not_running:
            print(f"soak: not running at the end: {l}", flush=True)
        for l in lost:
            print(f"soak: lost: {l}", flush=True)
        for h in self.hung[:20]:
            print(f"soak: hung: {h}", flush=True)
        ops = sum(n for k, o in self.stats.items() if k not in ("check", "cleanup", "create") for n in o.values())
        summary = {
            "sandboxes": len(sandboxes), "drivers": {d: plan.count(d) for d in sorted(set(plan))},
            "minutes": a.minutes, "operations": ops, "by_kind": self.stats, "kills_survived": self.kills,
            "hung": len(self.hung), "not_running": len(not_running), "lost": len(lost), "leaks": len(leaks),
        }
        if not leaks:
            shutil.rmtree(self.dir, ignore_errors=True)
            for cg in [os.path.join(r, "spinup-soak") for r in ["/sys/fs/cgroup"] + [
                    os.path.join("/sys/fs/cgroup", c) for c in os.listdir("/sys/fs/cgroup")]]:
                try:
                    os.rmdir(cg)
                except OSError:
                    pass
        print(json.dumps(summary), flush=True)
        return 1 if (self.hung or not_running or lost or leaks) else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sandboxes", type=int, default=60)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--drivers", default="container,gvisor,microvm")
    p.add_argument("--call-timeout", type=float, default=180)
    target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/spinup-ci-target")
    p.add_argument("--bin", default=f"{target}/release/spinup")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak: needs root (it runs a real daemon): sudo scripts/soak.py")
    sys.exit(Soak(args).run())


if __name__ == "__main__":
    main()
