"""Every E2B SDK call Spinup serves, through the official `e2b` package,
unmodified. Run by crates/cli/tests/e2b.rs against a real daemon:

    scenario.py TEMPLATE [--small]

E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL (or E2B_DOMAIN) point the SDK
at the daemon. SPINUP_CAPS is the driver's declared capabilities (JSON).
Each step prints "ok <step>"; the first failure raises (exit code 1).
"""

import asyncio
import gzip
import io
import json
import os
import sys
import time
import uuid

import e2b
from e2b import (
    AsyncSandbox,
    CommandExitException,
    FileNotFoundException,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType
from e2b.sandbox_sync.filesystem.filesystem import WriteEntry

TEMPLATE = sys.argv[1]
SMALL = "--small" in sys.argv
CAPS = json.loads(os.environ.get("SPINUP_CAPS", "{}"))
RUN = uuid.uuid4().hex[:8]


def ok(step):
    print(f"ok {step}", flush=True)


def expect(exc, f, *a, **kw):
    try:
        r = f(*a, **kw)
    except exc as e:
        return e
    raise AssertionError(f"{f.__name__} should raise {exc.__name__}, returned {r!r}")


def commands(sbx):
    r = sbx.commands.run("echo hi; echo err >&2; echo $GLOBAL_VAR; whoami; pwd")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\ng1\nuser\n/home/user\n", "err\n", 0), r
    r = sbx.commands.run("echo $X; pwd; whoami", envs={"X": "1"}, cwd="/tmp", user="root")
    assert r.stdout == "1\n/tmp\nroot\n", r
    ok("commands.run with envs, cwd, user")
    e = expect(CommandExitException, sbx.commands.run, "echo out; echo bad >&2; exit 3")
    assert (e.exit_code, e.stdout, e.stderr) == (3, "out\n", "bad\n"), e
    e = expect(CommandExitException, sbx.commands.run, "no-such-command-e2b")
    assert e.exit_code == 127 and "not found" in e.stderr, e
    ok("exit codes raise CommandExitException")
    out, err = [], []
    r = sbx.commands.run(
        "for i in 1 2 3; do echo $i; echo e$i >&2; sleep 0.2; done", on_stdout=out.append, on_stderr=err.append
    )
    assert "".join(out) == "1\n2\n3\n" and "".join(err) == "e1\ne2\ne3\n", (out, err)
    assert len(out) >= 2, f"output should stream in pieces, got {out}"
    ok("on_stdout/on_stderr stream")
    t0 = time.monotonic()
    expect(TimeoutException, sbx.commands.run, "sleep 30", timeout=2)
    assert time.monotonic() - t0 < 20
    ok("timeout kills the command")

    h = sbx.commands.run("echo started; sleep 120", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    listed = [p for p in sbx.commands.list() if p.pid == h.pid][0]
    assert listed.cmd == "/bin/bash" and listed.args[-1] == "echo started; sleep 120", listed
    seen = []
    c = sbx.commands.connect(h.pid)
    for stdout, _, _ in c:
        if stdout:
            seen.append(stdout)
        if "started" in "".join(seen):
            break
    c.disconnect()
    assert "started" in "".join(seen), seen
    ok("commands.list and connect (output replayed)")
    assert sbx.commands.kill(h.pid) is True
    deadline = time.monotonic() + 30
    while h.pid in [p.pid for p in sbx.commands.list()]:
        assert time.monotonic() < deadline, "a killed command is still listed"
        time.sleep(0.1)
    assert sbx.commands.kill(h.pid) is False
    assert sbx.commands.kill(999999) is False
    e = expect(NotFoundException, sbx.commands.connect, 999999)
    ok("commands.kill, unknown pids")

    h = sbx.commands.run("cat; echo done", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello\n")
    sbx.commands.send_stdin(h.pid, "world\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "hello\nworld\ndone\n", r
    ok("send_stdin and close_stdin")


def pty(sbx):
    import threading

    data = []
    h = sbx.pty.create(PtySize(rows=24, cols=80))

    def reader():
        try:
            h.wait(on_pty=lambda d: data.append(bytes(d)))
        except CommandExitException:
            pass

    t = threading.Thread(target=reader)
    t.start()

    def seen(s, secs=20):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if s in b"".join(data).decode(errors="replace"):
                return True
            time.sleep(0.05)
        return False

    sbx.pty.send_stdin(h.pid, b"stty size; echo PTY-$((6*7))\n")
    assert seen("PTY-42"), data
    sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(h.pid, b"stty size; exit\n")
    t.join(30)
    text = b"".join(data).decode(errors="replace")
    assert "PTY-42" in text and "24 80" in text and "30 100" in text, text
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    assert sbx.pty.kill(h.pid) is True
    ok("pty create, send_stdin, resize, kill")


def files(sbx):
    fs = sbx.files
    info = fs.write("hello.txt", "hello world")
    assert (info.name, info.path) == ("hello.txt", "/home/user/hello.txt"), info
    assert fs.read("hello.txt") == "hello world"
    assert fs.read("/home/user/hello.txt", format="bytes") == bytearray(b"hello world")
    assert b"".join(fs.read("hello.txt", format="stream")) == b"hello world"
    # find, not stat: this gVisor answers statx with EINVAL.
    r = sbx.commands.run("find hello.txt -printf '%u %m\\n'; echo more >> hello.txt && echo appended")
    assert r.stdout == "user 644\nappended\n", r
    ok("files.write, read (text, bytes, stream), owned by the user")
    infos = fs.write_files([WriteEntry(path="multi/a.txt", data="A"), WriteEntry(path="/tmp/b.bin", data=b"\0\1")])
    assert [i.path for i in infos] == ["/home/user/multi/a.txt", "/tmp/b.bin"], infos
    big = os.urandom(3 << 20)
    fs.write("big.bin", io.BytesIO(big))
    assert fs.read("big.bin", format="bytes") == big
    fs.write("zipped.txt", "z" * 10000, use_octet_stream=True, gzip=True)
    assert fs.read("zipped.txt") == "z" * 10000
    ok("write_files, octet-stream, gzip, 3 MiB")
    assert fs.exists("hello.txt") and not fs.exists("nope.txt")
    i = fs.get_info("multi")
    assert i.type == FileType.DIR and i.name == "multi", i
    assert fs.make_dir("d1/d2") is True
    assert fs.make_dir("d1/d2") is False
    fs.write("d1/d2/f", "x")
    names = sorted(e.path for e in fs.list("d1", depth=2))
    assert names == ["/home/user/d1/d2", "/home/user/d1/d2/f"], names
    assert [e.name for e in fs.list("d1")] == ["d2"]
    moved = fs.rename("hello.txt", "renamed.txt")
    assert moved.path == "/home/user/renamed.txt" and not fs.exists("hello.txt")
    fs.remove("d1")
    assert not fs.exists("d1")
    expect(FileNotFoundException, fs.read, "missing.txt")
    expect(FileNotFoundException, fs.get_info, "missing.txt")
    expect(SandboxException, fs.read, "/etc")
    ok("exists, get_info, make_dir, list depth, rename, remove, missing files")

    fs.make_dir("w")
    h = fs.watch_dir("w", recursive=True)
    fs.write("w/f.txt", "1")
    sbx.commands.run("chmod 600 w/f.txt; mkdir w/sub; echo x > w/sub/g; mv w/f.txt w/h.txt; rm w/h.txt")
    events = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events += [(e.name, e.type) for e in h.get_new_events()]
        if ("h.txt", FilesystemEventType.REMOVE) in events:
            break
        time.sleep(0.2)
    h.stop()
    for want in [
        ("f.txt", FilesystemEventType.CREATE),
        ("f.txt", FilesystemEventType.WRITE),
        ("f.txt", FilesystemEventType.CHMOD),
        ("sub", FilesystemEventType.CREATE),
        ("sub/g", FilesystemEventType.CREATE),
        ("f.txt", FilesystemEventType.RENAME),
        ("h.txt", FilesystemEventType.CREATE),
        ("h.txt", FilesystemEventType.REMOVE),
    ]:
        assert want in events, (want, events)
    ok("watch_dir (sync: create, write, chmod, rename, remove, recursive)")


async def async_watch(sbx_id):
    sbx = await AsyncSandbox.connect(sbx_id)
    got = []
    done = asyncio.Event()

    def on_event(e):
        got.append((e.name, e.type))
        if e.name == "z.txt" and e.type == FilesystemEventType.WRITE:
            done.set()

    await sbx.files.make_dir("aw")
    h = await sbx.files.watch_dir("aw", on_event)
    await sbx.files.write("aw/z.txt", "z")
    await asyncio.wait_for(done.wait(), 30)
    await h.stop()
    assert ("z.txt", FilesystemEventType.CREATE) in got, got
    r = await sbx.commands.run("echo async")
    assert r.stdout == "async\n"
    ok("watch_dir (async WatchDir stream) and the async client")


def lifecycle(sbx):
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id and info.metadata == {"suite": "e2b", "run": RUN}, info
    assert info.state.value == "running" and info.cpu_count >= 1 and info.memory_mb > 0, info
    sbx.set_timeout(600)
    assert sbx.get_info().end_at.timestamp() - time.time() > 500
    m = sbx.get_metrics()
    assert len(m) == 1 and m[0].mem_total > 0 and m[0].mem_used > 0 and 0 <= m[0].cpu_used_pct <= 100, m
    assert m[0].disk_total > 0 and 0 < m[0].disk_used <= m[0].disk_total, m
    assert sbx.is_running()
    ok("get_info, set_timeout, get_metrics, is_running")
    others = [Sandbox.create(TEMPLATE, metadata={"suite": "e2b", "run": RUN, "n": str(i)}) for i in range(2)]
    found = set()
    pager = Sandbox.list(query=e2b.SandboxQuery(metadata={"run": RUN}), limit=1)
    while pager.has_next:
        found |= {s.sandbox_id for s in pager.next_items()}
    assert found == {sbx.sandbox_id} | {o.sandbox_id for o in others}, found
    spaced = Sandbox.list(query=e2b.SandboxQuery(metadata={"n": "1", "run": RUN})).next_items()
    assert [s.sandbox_id for s in spaced] == [others[1].sandbox_id], spaced
    ok("list with metadata filter and paging")
    for o in others:
        assert o.kill() is True
    if CAPS.get("pause_resume"):
        assert sbx.pause() is True
        assert sbx.pause() is False, "pausing a paused sandbox says so"
        assert not sbx.is_running()
        paused = Sandbox.list(query=e2b.SandboxQuery(metadata={"run": RUN}, state=[e2b.SandboxState.PAUSED]))
        assert [s.sandbox_id for s in paused.next_items()] == [sbx.sandbox_id]
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("cat renamed.txt").stdout == "hello worldmore\n"
        ok("pause (twice), list paused, connect resumes")


def snapshots(sbx):
    if not CAPS.get("fs_snapshot"):
        expect(SandboxException, sbx.create_snapshot)
        ok("snapshot refused: the driver declares no fs_snapshot")
        return
    sbx.commands.run("echo from-snapshot > /home/user/snap.txt")
    snap = sbx.create_snapshot()
    listed = [s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()]
    assert snap.snapshot_id in listed, (snap, listed)
    child = Sandbox.create(snap.snapshot_id)
    assert child.files.read("/home/user/snap.txt") == "from-snapshot\n"
    child.kill()
    ok("create_snapshot, list_snapshots, create from a snapshot")
    if CAPS.get("fork"):
        kids = sbx.fork()
        assert len(kids) == 1 and kids[0].files.read("/home/user/snap.txt") == "from-snapshot\n", kids
        for k in kids:
            k.kill()
        ok("fork")
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    ok("delete_snapshot")


def ports(sbx):
    import urllib.error
    import urllib.request

    sbx.commands.run("mkdir -p www && echo served > www/index.html")
    h = sbx.commands.run("cd www && exec python3 -m http.server 8080", background=True, timeout=0)
    host = sbx.get_host(8080)
    assert host.startswith("8080-" + sbx.sandbox_id), host
    base = os.environ.get("E2B_SANDBOX_URL") or f"http://{host}"
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8080"}
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/index.html", headers=headers), timeout=10)
        raise AssertionError("a private sandbox's port opened without its traffic token")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e
    headers["E2B-Traffic-Access-Token"] = sbx.traffic_access_token
    deadline = time.monotonic() + 30
    while True:
        try:
            req = urllib.request.Request(base + "/index.html", headers=headers)
            assert urllib.request.urlopen(req, timeout=10).read() == b"served\n"
            break
        except urllib.error.HTTPError as e:
            # 502 "port is not open" until the server listens.
            assert e.code == 502 and time.monotonic() < deadline, e
            time.sleep(0.3)
    h.kill()
    ok("get_host and port traffic through the front end (token required)")


def errors(sbx_id):
    expect(SandboxNotFoundException, Sandbox.connect, "doesnotexist1")
    gone = Sandbox.create(TEMPLATE)
    assert gone.kill() is True
    assert gone.kill() is False
    expect(SandboxNotRunningException, gone.commands.run, "true")
    expect(SandboxException, Sandbox.create, "no-such-template")
    expect(e2b.AuthenticationException, Sandbox.list(api_key="wrong-key").next_items)
    ok("unknown sandbox, killed sandbox, unknown template, bad API key")


def main():
    sbx = Sandbox.create(TEMPLATE, timeout=600, metadata={"suite": "e2b", "run": RUN}, envs={"GLOBAL_VAR": "g1"})
    assert sbx.sandbox_id and sbx._envd_version is not None
    ok("Sandbox.create")
    commands(sbx)
    files(sbx)
    if not SMALL:
        pty(sbx)
        asyncio.run(async_watch(sbx.sandbox_id))
        ports(sbx)
    lifecycle(sbx)
    if not SMALL:
        snapshots(sbx)
    errors(sbx.sandbox_id)
    assert sbx.kill() is True
    print("SCENARIO PASSED", flush=True)


if __name__ == "__main__":
    main()
