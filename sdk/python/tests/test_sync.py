"""The sync client against a live daemon."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time

import pytest

import spinup
from spinup import ExecError, NetworkPolicy, Resources, SecretMount

from conftest import CODE_ENV, DRIVER, ENV, RUN, unique


# --- exec ----------------------------------------------------------------------


def test_exec_returns_output_and_exit_code(sbx):
    r = sbx.exec("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.ok) == ("out\n", "err\n", 3, False)
    r = sbx.exec(["sh", "-c", 'echo "$0 $1 $FOO $(pwd)"', "a b", "c"], env={"FOO": "bar"}, cwd="/tmp")
    assert r.stdout == "a b c bar /tmp\n" and r.ok
    assert sbx.exec(["cat"], input="fed to stdin").stdout == "fed to stdin"
    assert sbx.exec("id -u", user="1000").stdout.strip() == "1000"
    r = sbx.exec("no-such-command-here")
    assert r.exit_code == 127 and "not found" in r.stderr
    r = sbx.exec(["no-such-binary"])
    assert r.exit_code == 127 and r.message and "not found" in r.message


def test_exec_timeout_and_check(sbx):
    t0 = time.monotonic()
    r = sbx.exec("sleep 30", timeout_ms=300)
    assert r.timed_out and not r.ok and r.signal is not None
    assert time.monotonic() - t0 < 10
    with pytest.raises(ExecError) as e:
        sbx.exec("echo oops >&2; exit 7", check=True)
    assert e.value.result.exit_code == 7 and "oops" in str(e.value)


def test_exec_streams_to_callbacks_as_output_comes(sbx):
    seen: list[tuple[str, str, float]] = []
    t0 = time.monotonic()
    r = sbx.exec(
        "echo first; sleep 1.5; echo second >&2; echo third",
        on_stdout=lambda s: seen.append(("out", s, time.monotonic() - t0)),
        on_stderr=lambda s: seen.append(("err", s, time.monotonic() - t0)),
    )
    total = time.monotonic() - t0
    assert r.exit_code == 0 and r.stdout == "first\nthird\n" and r.stderr == "second\n"
    assert r.pid is not None
    assert "".join(s for k, s, _ in seen if k == "out") == "first\nthird\n"
    assert "".join(s for k, s, _ in seen if k == "err") == "second\n"
    first_at = next(t for k, s, t in seen if "first" in s)
    assert first_at < total - 1.0, f"'first' arrived at {first_at:.2f}s of {total:.2f}s: not streamed"


def test_background_process_stdin_attach_signal(sbx):
    p = sbx.start("while read l; do echo bg:$l; done; echo stdin-closed", stdin=True)
    assert isinstance(p.pid, int) and p.pid > 0
    info = p.info()
    assert info.running and info.background
    assert p.pid in [x.pid for x in sbx.processes.list()]
    p.send_stdin("one\n")
    p.send_stdin(b"two\n")
    with p.attach() as a:  # replays what it printed already
        out = ""
        while "bg:two" not in out:
            ev = a.next_event(timeout=20)
            assert ev is not None and ev.kind == "stdout", ev
            out += ev.data.decode()
        assert out.startswith("bg:one\n")
        a.send_stdin("three\n")  # through the WebSocket too
        p.close_stdin()  # through the HTTP route
        r = a.wait(timeout=20)
    assert r.exit_code == 0 and "bg:three\nstdin-closed\n" in r.stdout
    assert not p.is_running()

    p = sbx.exec("sleep 300", background=True)
    assert p.is_running()
    p.signal("TERM")
    r = p.wait(timeout=20)
    assert r.signal == 15 and r.exit_code == 143
    with pytest.raises(spinup.NotFound) as e:
        sbx.processes.signal(999999, 15)
    assert e.value.code == "not_found"
    with pytest.raises(spinup.BadRequest):
        sbx.processes.signal(p.pid, 99)


def test_wait_after_exit_gives_the_status(sbx):
    p = sbx.start("exit 4")
    for _ in range(100):
        if not p.is_running():
            break
        time.sleep(0.05)
    assert p.wait(timeout=10).exit_code == 4


def test_pty_size_resize_input_and_exit(sbx):
    with sbx.pty(cols=100, rows=30) as t:
        assert t.pid
        t.send("tty; stty size; echo term=$TERM\n")
        out = t.read_until("term=xterm")
        assert "/dev/pts/" in out and "30 100" in out
        t.resize(120, 40)
        time.sleep(0.2)
        t.send("stty size; exit 5\n")
        assert "40 120" in t.read_until("40 120")
        assert t.wait(timeout=20).exit_code == 5


# --- files ---------------------------------------------------------------------


def test_files_round_trip(sbx):
    f = sbx.files
    info = f.write("/data/a/b/hello.txt", "hi there", mode=0o600)
    assert (info.size, info.mode, info.kind) == (8, 0o600, "file")
    assert f.read("/data/a/b/hello.txt") == b"hi there"
    assert f.read_text("/data/a/b/hello.txt") == "hi there"
    assert sbx.exec("cat /data/a/b/hello.txt").stdout == "hi there"
    st = f.stat("/data/a/b/hello.txt")
    assert st.is_file and st.mode == 0o600 and st.name == "hello.txt"
    d = f.mkdir("/data/x/y/z")
    assert d.is_dir
    assert [e.name for e in f.list("/data")] == ["a", "x"]
    deep = [e.path for e in f.list("/data", depth=4)]
    assert "/data/a/b/hello.txt" in deep and "/data/x/y/z" in deep
    moved = f.rename("/data/a/b/hello.txt", "/data/moved.txt")
    assert moved.path == "/data/moved.txt"
    assert not f.exists("/data/a/b/hello.txt") and f.exists("/data/moved.txt")
    assert f.chmod("/data/moved.txt", 0o755).mode == 0o755
    with pytest.raises(spinup.Conflict):
        f.remove("/data/x")  # not empty
    f.remove("/data/x", recursive=True)
    with pytest.raises(spinup.NotFound) as e:
        f.stat("/data/x")
    assert e.value.code == "not_found" and e.value.status == 404
    with pytest.raises(spinup.BadRequest) as e:
        f.read("relative/path")
    assert e.value.code == "invalid_argument"
    assert f.write("/tmp/owned", b"mine", user="1000").uid == 1000


def test_streamed_write_of_several_mib(sbx, tmp_path):
    data = os.urandom(9 * 1024 * 1024 + 123)
    want = hashlib.sha256(data).hexdigest()
    # From a file object (read in chunks, sent chunked).
    info = sbx.files.write("/data/big.bin", io.BytesIO(data))
    assert info.size == len(data)
    assert sbx.exec("sha256sum /data/big.bin").stdout.split()[0] == want
    # From an iterator of chunks.
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    assert sbx.files.write("/data/big2.bin", chunks).size == len(data)
    assert hashlib.sha256(sbx.files.read("/data/big2.bin")).hexdigest() == want
    # Upload a local file, stream it back down.
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    sbx.files.upload(local, "/data/big3.bin")
    down = tmp_path / "down.bin"
    assert sbx.files.download("/data/big3.bin", down) == len(data)
    assert hashlib.sha256(down.read_bytes()).hexdigest() == want


def test_watch_reports_changes(sbx):
    sbx.exec("mkdir -p /w/pre", check=True)
    with sbx.files.watch("/w", recursive=True) as w:
        sbx.exec("echo hello > /w/a && mkdir /w/sub && echo y > /w/pre/g && rm /w/a", check=True)
        got = []
        for ev in w:
            got.append((ev.type, ev.path, ev.is_dir))
            if ev.type == "remove" and ev.path == "/w/a":
                break
    assert ("create", "/w/a", False) in got
    assert ("create", "/w/sub", True) in got
    assert ("create", "/w/pre/g", False) in got
    with pytest.raises(spinup.NotFound):
        sbx.files.watch("/no/such/dir")


# --- snapshots, fork, diff -----------------------------------------------------


def test_snapshot_fork_and_diff(client, sbx, tmp_path):
    sbx.files.write("/work/state.txt", "v1")
    name = unique("sdk-snap")
    snap = sbx.snapshot(name, labels={"k": "v"})
    assert snap.name == name and snap.sandbox_id == sbx.id and snap.layer.startswith("sha256:")
    assert client.snapshots.get(name).id == snap.id
    assert snap.id in [s.id for s in client.snapshots.list()]
    digest = client.snapshots.download_layer(snap.id, tmp_path / "layer.tar")
    assert digest == snap.layer
    with tarfile.open(tmp_path / "layer.tar") as t:
        # The layer's GNU headers carry "00000000000" atime/ctime fields,
        # which Python's tarfile reads as a ustar name prefix: match the end.
        assert any(n == "work/state.txt" or n.endswith("/work/state.txt") for n in t.getnames()), t.getnames()

    sbx.files.write("/work/state.txt", "v2")
    sbx.files.write("/work/new.txt", "n")
    d = sbx.diff(since=name)
    assert d.since is not None
    kinds = {c.path: c.kind for c in d.changes}
    assert kinds.get("/work/state.txt") == "modified" and kinds.get("/work/new.txt") == "added"
    d = sbx.diff(path="/work/state.txt", content=True)
    assert d.after == "v2"
    assert "/work/state.txt" in sbx.diff().paths("added")

    fork = sbx.fork(count=2)
    try:
        assert len(fork.children) == 2 and fork.snapshot.ephemeral
        a, b = fork.children
        assert a.id != b.id and a.labels.get("spinup.fork.parent") == sbx.id
        a.exec("echo A > /work/state.txt", check=True)
        assert a.files.read("/work/state.txt") == b"A\n"
        assert b.files.read("/work/state.txt") == b"v2"
        assert sbx.files.read("/work/state.txt") == b"v2"
    finally:
        for c in fork.children:
            c.kill()

    with client.sandboxes.create(from_snapshot=name, driver=DRIVER, labels=RUN) as restored:
        assert restored.files.read("/work/state.txt") == b"v1"
        assert not restored.files.exists("/work/new.txt")
    client.snapshots.remove(name)
    with pytest.raises(spinup.NotFound):
        client.snapshots.get(name)


# --- network, ports, secrets ---------------------------------------------------


def test_network_policy(client, sbx):
    assert sbx.details.network.mode == "none"
    p = sbx.set_network("allow", allow=["10.0.0.0/8", "example.com"], hosts={"db.internal": "10.1.2.3"})
    assert (p.mode, p.allow, p.hosts) == ("allow", ["10.0.0.0/8", "example.com"], {"db.internal": "10.1.2.3"})
    assert client.sandboxes.get(sbx.id).details.network.allow == ["10.0.0.0/8", "example.com"]
    assert sbx.set_network(NetworkPolicy(mode="none")).mode == "none"
    with pytest.raises(spinup.BadRequest):
        sbx.set_network({"mode": "sideways"})
    with client.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN, network={"mode": "allow", "allow": ["10.9.0.0/16"]}) as s2:
        assert s2.details.network.allow == ["10.9.0.0/16"]


def test_ports_expose_and_unexpose(sbx):
    assert sbx.ports.list() == []
    sbx.files.write("/www/index.html", "served from the sandbox")
    sbx.start("busybox httpd -f -p 8000 -h /www || python3 -m http.server 8000 -d /www")
    e = sbx.ports.expose(8000)
    assert e.port == 8000 and not e.public and e.token and e.url and e.url.startswith("http://127.0.0.1:")
    assert e.token not in repr(e)
    listed = sbx.ports.list()
    assert [(p.port, p.public) for p in listed] == [(8000, False)]
    assert listed[0].token_sha256 == hashlib.sha256(e.token.encode()).hexdigest()
    import httpx

    body = ""
    for _ in range(50):
        try:
            r = httpx.get(e.url + "/index.html", headers={"X-Spinup-Token": e.token}, timeout=5)
            body = r.text
            if r.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    assert body == "served from the sandbox"
    assert httpx.get(e.url + "/index.html", timeout=5).status_code == 401
    sbx.ports.unexpose(8000)
    assert sbx.ports.list() == []
    with pytest.raises(spinup.NotFound):
        sbx.ports.unexpose(8000)


def test_secrets(client):
    name = unique("SDK_TOKEN").replace("-", "_")
    info = client.secrets.set(name, "s3cr3t-value")
    assert info.name == name and info.created_at > 0
    assert name in [s.name for s in client.secrets.list()]
    assert client.secrets.get(name).name == name
    later = client.secrets.set(name, b"second-value")
    assert later.updated_at >= info.updated_at
    try:
        with client.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN, secrets=[name]) as s:
            assert [m.name for m in s.details.secrets] == [name]
            assert s.exec(f"cat /run/secrets/{name}").stdout == "second-value"
            with pytest.raises(spinup.Conflict) as e:
                client.secrets.remove(name)
            assert e.value.code == "conflict"
            mounts = s.secrets.attach(SecretMount(name=name, mode="env"))
            assert [(m.name, m.mode) for m in mounts] == [(name, "env")]
            assert s.exec(f'printf %s "${name}"').stdout == "second-value"
            assert s.secrets.detach(name) == []
            assert s.secrets.list() == []
    finally:
        client.secrets.remove(name)
    with pytest.raises(spinup.NotFound):
        client.secrets.get(name)


# --- lifecycle, environments, drivers, errors ----------------------------------


def test_lifecycle(client):
    label = {**RUN, "case": unique("life")}
    with client.sandboxes.create(env=ENV, driver=DRIVER, labels=label, timeout_s=600, resources=Resources(memory_mib=256)) as s:
        sid = s.id
        assert s.state == "running" and s.env == ENV and s.driver == DRIVER
        assert s.details.resources.memory_mib == 256 and s.details.timeout_s == 600
        assert [x.id for x in client.sandboxes.list(labels=label)] == [sid]
        assert client.sandboxes.list(labels={"case": "nothing-has-this"}) == []
        assert client.sandboxes.get(sid).id == sid
        s.set_timeout(120)
        assert s.details.timeout_s == 120 and s.details.expires_at
        s.set_timeout(0)
        assert s.details.expires_at is None
        with pytest.raises(spinup.Conflict):
            s.remove()  # running, no force
        assert s.pause().state == "paused"
        with pytest.raises(spinup.Conflict):
            s.exec("true")
        assert s.resume().state == "running"
        assert s.exec("echo back").stdout == "back\n"
        info = s.info()
        assert info.version and info.hostname == sid and info.uptime_ms > 0
        states = [e.to for e in s.events()]
        assert states[:2] == ["creating", "running"] and "paused" in states
    with pytest.raises(spinup.NotFound):
        client.sandboxes.get(sid)  # the with block removed it


def test_errors_carry_the_api_code(client, sbx):
    with pytest.raises(spinup.NotFound) as e:
        client.sandboxes.get("ffffffffffff")
    assert (e.value.code, e.value.status) == ("not_found", 404)
    assert "ffffffffffff" in e.value.message
    with pytest.raises(spinup.NotFound) as e:
        client.sandboxes.create(env="no-such-env-" + unique("x"), driver=DRIVER)
    assert e.value.code == "not_found"
    with pytest.raises(spinup.BadRequest) as e:
        client.sandboxes.create(env=ENV, driver=DRIVER, network="sideways")
    assert e.value.code == "invalid_argument"
    with pytest.raises(spinup.Unsupported) as e:
        sbx.update_resources(Resources(memory_mib=128))
    assert (e.value.code, e.value.capability, e.value.status) == ("unsupported", "live_resource_update", 501)
    assert isinstance(e.value, spinup.SpinupError)


def test_environments_and_drivers(client):
    names = [e.name for e in client.environments.list()]
    assert ENV in names
    assert client.environments.get(ENV).digest.startswith("sha256:")
    assert "busybox" in client.environments.recipes()
    progress: list[str] = []
    env = client.environments.build("busybox", on_progress=progress.append)
    assert env.name == "busybox" and progress
    with pytest.raises(spinup.BadRequest):
        client.environments.build("no-such-recipe")

    # Import a tarball: the busybox environment's own layer, as a new name.
    name = unique("sdk-import")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        payload = b"imported\n"
        ti = tarfile.TarInfo("etc/imported.txt")
        ti.size = len(payload)
        t.addfile(ti, io.BytesIO(payload))
    imported = client.environments.import_tarball(name, buf.getvalue())
    try:
        assert imported.name == name and client.environments.get(name).digest == imported.digest
    finally:
        client.environments.remove(name)
    with pytest.raises(spinup.NotFound):
        client.environments.get(name)

    drivers = {d.driver: d for d in client.drivers()}
    assert drivers[DRIVER].available and drivers[DRIVER].exec
    assert client.driver(DRIVER).files


def test_context_manager_removes_even_on_error(client):
    with pytest.raises(RuntimeError):
        with client.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN) as s:
            sid = s.id
            raise RuntimeError("boom")
    with pytest.raises(spinup.NotFound):
        client.sandboxes.get(sid)


# --- code interpreter ----------------------------------------------------------


def test_run_code_keeps_state_streams_and_has_contexts(client):
    with client.sandboxes.create(env=CODE_ENV, driver=DRIVER, labels=RUN, resources={"memory_mib": 2048}) as s:
        seen: list[str] = []
        x = s.run_code("x = 2\nprint('hi')\nx * 21", on_stdout=seen.append)
        assert (x.text, x.stdout, x.error, seen) == ("42", "hi\n", None, ["hi\n"]), x
        assert x.execution_count == 1
        assert s.run_code("x").text == "2"
        e = s.run_code("1/0").error
        assert e is not None and (e.name, e.value) == ("ZeroDivisionError", "division by zero"), e
        chart = s.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        pngs = [r.png for r in chart.results if r.png]
        assert pngs and pngs[0].startswith(b"\x89PNG"), chart
        t = s.run_code("while True: pass", timeout_s=2)
        assert t.timed_out and t.error is not None and t.error.name == "TimeoutError", t
        assert s.run_code("x").text == "2"
        assert s.run_code("[1, 2].map(v => v * 2)", language="javascript").text == "[ 2, 4 ]"
        ctx = s.create_code_context("python", cwd="/tmp")
        assert (ctx.language, ctx.cwd) == ("python", "/tmp")
        assert s.run_code("import os\nos.getcwd()", context=ctx).text == "'/tmp'"
        assert ctx.id in [c.id for c in s.code_contexts()]
        s.restart_code_context(ctx)
        err = s.run_code("os", context=ctx).error
        assert err is not None and err.name == "NameError", err
        s.remove_code_context(ctx)
        with pytest.raises(spinup.NotFound):
            s.run_code("1", context=ctx)
        with pytest.raises(spinup.BadRequest):
            s.run_code("1", language="cobol")
