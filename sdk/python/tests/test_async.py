"""The asyncio client against a live daemon."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

import spinup

from conftest import CODE_ENV, DRIVER, ENV, RUN, unique


async def test_exec_and_async_streaming_callbacks(asbx):
    r = await asbx.exec("echo out; echo err >&2; exit 2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 2)
    assert (await asbx.exec(["cat"], input="piped")).stdout == "piped"

    seen: list[tuple[str, float]] = []
    t0 = time.monotonic()

    async def on_out(s: str) -> None:  # a coroutine callback
        await asyncio.sleep(0)
        seen.append((s, time.monotonic() - t0))

    r = await asbx.exec("echo early; sleep 1.5; echo late", on_stdout=on_out, on_stderr=lambda s: None)
    total = time.monotonic() - t0
    assert r.stdout == "early\nlate\n" and "".join(s for s, _ in seen) == r.stdout
    assert next(t for s, t in seen if "early" in s) < total - 1.0, "not streamed"
    with pytest.raises(spinup.ExecError):
        await asbx.exec("exit 9", check=True)


async def test_async_background_stdin_attach_signal(asbx):
    p = await asbx.start("while read l; do echo got:$l; done; echo closed", stdin=True)
    assert (await p.info()).running
    await p.send_stdin("a\n")
    async with await p.attach() as a:
        out = ""
        while "got:a" not in out:
            ev = await a.next_event(timeout=20)
            assert ev is not None and ev.kind == "stdout", ev
            out += ev.data.decode()
        await a.send_stdin(b"b\n")
        await a.close_stdin()
        r = await a.wait(timeout=20)
    assert r.exit_code == 0 and r.stdout.endswith("got:b\nclosed\n")

    p = await asbx.exec("sleep 300", background=True)
    assert await p.is_running()
    await p.kill()
    r = await p.wait(timeout=20)
    assert r.signal == 9
    assert p.pid in [x.pid for x in await asbx.processes.list()]


async def test_async_pty(asbx):
    async with await asbx.pty(["/bin/sh"], cols=90, rows=20) as t:
        await t.send("stty size\n")
        assert "20 90" in await t.read_until("20 90")
        await t.resize(132, 50)
        await asyncio.sleep(0.2)
        await t.send("stty size; exit 3\n")
        await t.read_until("50 132")
        assert (await t.wait(timeout=20)).exit_code == 3


async def test_async_files_streamed_write_and_watch(asbx):
    data = os.urandom(5 * 1024 * 1024 + 7)

    async def chunks():
        for i in range(0, len(data), 256 * 1024):
            await asyncio.sleep(0)
            yield data[i : i + 256 * 1024]

    info = await asbx.files.write("/data/big.bin", chunks(), mode=0o640)
    assert info.size == len(data) and info.mode == 0o640
    got = b"".join([c async for c in asbx.files.iter_read("/data/big.bin")])
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert (await asbx.files.stat("/data/big.bin")).size == len(data)
    assert [e.name for e in await asbx.files.list("/data")] == ["big.bin"]
    await asbx.files.mkdir("/w")
    async with asbx.files.watch("/w") as w:
        await asbx.files.write("/w/new.txt", "x")
        ev = await asyncio.wait_for(w.__anext__(), 30)
        assert (ev.type, ev.path, ev.is_dir) == ("create", "/w/new.txt", False)
    await asbx.files.remove("/data", recursive=True)
    assert not await asbx.files.exists("/data/big.bin")


async def test_async_snapshot_fork_diff(aclient, asbx):
    await asbx.files.write("/s/f.txt", "base")
    snap = await asbx.snapshot(unique("asnap"))
    await asbx.files.write("/s/f.txt", "changed")
    d = await asbx.diff(since=snap.id)
    assert [(c.path, c.kind) for c in d.changes] == [("/s/f.txt", "modified")]
    fork = await asbx.fork()
    try:
        (child,) = fork.children
        assert await child.files.read("/s/f.txt") == b"changed"
        assert (await child.exec("cat /s/f.txt")).stdout == "changed"
    finally:
        for c in fork.children:
            await c.kill()
    await aclient.snapshots.remove(snap.id)


async def test_async_create_forms_and_errors(aclient):
    s = await aclient.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN)
    try:
        assert s.state == "running"
        assert (await aclient.sandboxes.get(s.id)).id == s.id
        assert s.id in [x.id for x in await aclient.sandboxes.list(labels=RUN)]
    finally:
        await s.kill()
    async with aclient.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN) as s2:
        sid = s2.id
        assert (await s2.exec("echo in-block")).stdout == "in-block\n"
    with pytest.raises(spinup.NotFound) as e:
        await aclient.sandboxes.get(sid)
    assert e.value.code == "not_found" and e.value.status == 404
    with pytest.raises(spinup.NotFound):
        await aclient.snapshots.get(unique("nosnap"))
    assert DRIVER in [d.driver for d in await aclient.drivers()]
    assert ENV in [e.name for e in await aclient.environments.list()]


async def test_async_secrets_and_ports(aclient, asbx):
    name = unique("ASECRET").replace("-", "_")
    await aclient.secrets.set(name, "av")
    try:
        mounts = await asbx.secrets.attach(name)
        assert [(m.name, m.mode) for m in mounts] == [(name, "file")]
        assert (await asbx.exec(f"cat /run/secrets/{name}")).stdout == "av"
        with pytest.raises(spinup.Conflict):
            await aclient.secrets.remove(name)
        await asbx.secrets.detach(name)
    finally:
        await aclient.secrets.remove(name)
    e = await asbx.ports.expose(9000, public=True)
    assert e.public and e.token is None
    assert [p.port for p in await asbx.ports.list()] == [9000]
    await asbx.ports.unexpose(9000)
    assert await asbx.ports.list() == []


async def test_run_code_with_async_callbacks(aclient):
    async with aclient.sandboxes.create(env=CODE_ENV, driver=DRIVER, labels=RUN, resources={"memory_mib": 2048}) as s:
        seen: list[object] = []

        async def on_result(r: spinup.CodeResult) -> None:
            seen.append(r)

        x = await s.run_code("import sys\nprint('e', file=sys.stderr)\n{'a': 1}", on_result=on_result)
        assert (x.text, x.stderr) == ("{'a': 1}", "e\n"), x
        assert seen == x.results
        assert (await s.run_code("cd /tmp && pwd", language="bash")).stdout == "/tmp\n"
        assert (await s.run_code("pwd", language="bash")).stdout == "/tmp\n"
