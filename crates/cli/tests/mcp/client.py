"""Spinup's MCP server through the official MCP Python SDK (`mcp` on PyPI).

    client.py stdio SPINUP_BIN [--smoke]   `spinup mcp` over stdio (SPINUP_HOST
                                           and SPINUP_API_KEY from the env)
    client.py http URL KEY [--smoke]       streamable HTTP at URL with the key

Options: --driver D (default container), --env E (default busybox),
--code-env E (also run_code in a sandbox of E).
The full scenario lists the tools and calls every one, checking real results;
--smoke only initializes, lists the tools and the sandboxes. Prints
SCENARIO PASSED at the end; any failed check raises.
"""

import argparse
import asyncio
import base64
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

TOOLS = {
    "create_sandbox",
    "remove_sandbox",
    "list_sandboxes",
    "run_command",
    "run_code",
    "read_file",
    "write_file",
    "list_files",
    "snapshot",
    "fork",
    "diff",
    "expose_port",
}
INVALID_PARAMS = -32602


def log(*a):
    print(*a, flush=True)


def check(cond, what, got=None):
    if not cond:
        raise AssertionError(f"{what}: {got!r}")


def text(r):
    return "".join(getattr(c, "text", "") for c in r.content)


async def ok(s, tool, args):
    """A tool call that must succeed; its structured answer."""
    r = await s.call_tool(tool, args)
    check(not r.is_error, f"{tool} {args} failed", text(r))
    check(isinstance(r.structured_content, dict), f"{tool}: structured content", r)
    return r.structured_content


async def tool_error(s, tool, args, code):
    """A tool call that must fail as a tool result with this error code."""
    r = await s.call_tool(tool, args)
    check(r.is_error, f"{tool} {args} should fail", r)
    check(text(r).startswith(f"{code}: "), f"{tool} {args}: error text", text(r))
    check(r.structured_content["code"] == code, f"{tool}: structured error", r.structured_content)
    return text(r)


async def protocol_error(s, tool, args):
    """A tool call whose arguments are refused as JSON-RPC invalid params."""
    try:
        r = await s.call_tool(tool, args)
    except MCPError as e:
        check(e.code == INVALID_PARAMS, f"{tool} {args}: JSON-RPC error code", (e.code, e.message))
        return e.message
    raise AssertionError(f"{tool} {args} should be a protocol error, got {r}")


async def sh(s, sid, cmd, **kw):
    return await ok(s, "run_command", {"id": sid, "cmd": cmd, **kw})


async def smoke(s):
    init = await s.initialize()
    check(init.server_info.name == "spinup", "server name", init.server_info)
    tools = await s.list_tools()
    check({t.name for t in tools.tools} == TOOLS, "tools", [t.name for t in tools.tools])
    check("sandboxes" in await ok(s, "list_sandboxes", {}), "list_sandboxes", None)
    log("initialized:", init.protocol_version, "tools:", len(tools.tools))


async def scenario(s, driver, env):
    await smoke(s)
    tools = {t.name: t for t in (await s.list_tools()).tools}
    for t in tools.values():
        check(t.description and len(t.description) > 30, f"{t.name}: description", t.description)
        check(t.input_schema.get("type") == "object", f"{t.name}: schema", t.input_schema)
    code_props = tools["run_code"].input_schema["properties"]
    check({"id", "code", "language", "context", "timeout_s"} <= set(code_props), "run_code schema", code_props)
    props = tools["run_command"].input_schema["properties"]
    check({"id", "cmd", "argv", "cwd", "env", "user", "timeout_ms"} <= set(props), "run_command schema", props)

    tag = uuid.uuid4().hex[:8]
    sb = await ok(s, "create_sandbox", {"env": env, "driver": driver, "timeout_s": 900, "labels": {"mcp": tag}})
    sid = sb["id"]
    check(sb["state"] == "running" and sb["driver"] == driver, "created", sb)
    log("created", sid, "on", driver)
    children = []
    try:
        listed = await ok(s, "list_sandboxes", {"labels": {"mcp": tag}})
        check([x["id"] for x in listed["sandboxes"]] == [sid], "list by label", listed)

        # Commands: output, exit code, argv, env, cwd, stdin, bounds, timeout.
        r = await sh(s, sid, "echo hello; echo oops >&2; exit 3")
        check((r["stdout"], r["stderr"], r["exit_code"]) == ("hello\n", "oops\n", 3), "shell command", r)
        r = await ok(
            s, "run_command", {"id": sid, "argv": ["sh", "-c", 'echo "$FOO"; pwd'], "env": {"FOO": "bar"}, "cwd": "/tmp"}
        )
        check(r["stdout"] == "bar\n/tmp\n" and r["exit_code"] == 0, "argv, env, cwd", r)
        r = await sh(s, sid, "tr a-z A-Z", stdin="piped in")
        check(r["stdout"] == "PIPED IN", "stdin", r)
        r = await sh(s, sid, "id -u", user="65534")
        check(r["stdout"].strip() == "65534", "user", r)
        r = await sh(s, sid, "yes abcdefgh | head -c 300000")
        check(r.get("stdout_truncated") is True and r["stdout_bytes"] == 300000, "truncation flags", {k: v for k, v in r.items() if k != "stdout"})
        check(len(r["stdout"]) < 70000 and "bytes of output left out" in r["stdout"], "bounded output", len(r["stdout"]))
        data = ("abcdefgh\n" * 40000)[:300000]
        check(r["stdout"].startswith(data[:32768]) and r["stdout"].endswith(data[-32768:]), "head and tail kept", r["stdout"][-20:])
        t0 = time.monotonic()
        r = await sh(s, sid, "sleep 30", timeout_ms=500)
        check(r["timed_out"] is True and time.monotonic() - t0 < 15, "timeout", r)
        log("run_command: ok")

        # Files: a text round trip, a binary one, a listing.
        w = await ok(s, "write_file", {"id": sid, "path": "/work/hello.txt", "content": "héllo, wörld\n"})
        check(w["size"] == len("héllo, wörld\n".encode()), "write_file stat", w)
        r = await ok(s, "read_file", {"id": sid, "path": "/work/hello.txt"})
        check((r["content"], r["encoding"]) == ("héllo, wörld\n", "utf-8"), "text round trip", r)
        blob = bytes(range(256)) * 4
        await ok(
            s,
            "write_file",
            {"id": sid, "path": "/work/blob.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64", "mode": 0o600},
        )
        r = await ok(s, "read_file", {"id": sid, "path": "/work/blob.bin"})
        check(r["encoding"] == "base64" and base64.b64decode(r["content"]) == blob, "binary round trip", r["encoding"])
        r = await sh(s, sid, "stat -c %a /work/blob.bin && cat /work/hello.txt")
        check(r["stdout"] == "600\nhéllo, wörld\n", "written as asked", r)
        ls = await ok(s, "list_files", {"id": sid, "path": "/work"})
        names = {e["name"]: e for e in ls["entries"]}
        check({"hello.txt", "blob.bin"} <= set(names) and names["blob.bin"]["size"] == 1024, "list_files", ls)
        await ok(s, "write_file", {"id": sid, "path": "/work/sub/deep.txt", "content": "deep"})
        check("sub" in {e["name"] for e in (await ok(s, "list_files", {"id": sid, "path": "/work"}))["entries"]}, "parents made", None)
        flat = await ok(s, "list_files", {"id": sid, "path": "/work"})
        check(all(e["path"] != "/work/sub/deep.txt" for e in flat["entries"]), "depth 1 stays in the dir", flat)
        deep = await ok(s, "list_files", {"id": sid, "path": "/work", "depth": 2})
        check(any(e["path"] == "/work/sub/deep.txt" for e in deep["entries"]), "list_files depth 2", deep)
        await tool_error(s, "read_file", {"id": sid, "path": "/work/missing.txt"}, "not_found")
        await sh(s, sid, "head -c 1100000 /dev/zero > /work/big")
        msg = await tool_error(s, "read_file", {"id": sid, "path": "/work/big"}, "invalid_argument")
        check("at most" in msg, "too big to read", msg)
        await sh(s, sid, "rm /work/big")
        log("files: ok")

        # Snapshot, diff, fork.
        snap = await ok(s, "snapshot", {"id": sid, "name": f"mcp-{tag}"})
        check(snap["id"] and snap["name"] == f"mcp-{tag}", "snapshot", snap)
        await ok(s, "write_file", {"id": sid, "path": "/work/after.txt", "content": "later\n"})
        d = await ok(s, "diff", {"id": sid})
        paths = {c["path"]: c for c in d["changes"]}
        check("/work/hello.txt" in paths and paths["/work/hello.txt"]["kind"] == "added", "diff since creation", d)
        d = await ok(s, "diff", {"id": sid, "since": f"mcp-{tag}"})
        paths = {c["path"] for c in d["changes"]}
        check("/work/after.txt" in paths and "/work/hello.txt" not in paths, "diff since the snapshot", d)
        f = await ok(s, "fork", {"id": sid, "count": 1})
        children = [c["id"] for c in f["children"]]
        check(len(children) == 1 and children[0] != sid and f["snapshot"]["id"], "fork", f)
        r = await sh(s, children[0], "cat /work/after.txt; hostname")
        check(r["stdout"] == f"later\n{children[0]}\n", "the child has the parent's files", r)
        log("snapshot, diff, fork: ok")

        # A server in the sandbox, reached through an exposed port.
        await sh(s, sid, "mkdir -p /tmp/www && echo served-over-mcp > /tmp/www/index.html")
        bg = await ok(s, "run_command", {"id": sid, "cmd": "httpd -f -p 8080 -h /tmp/www", "background": True})
        check(bg["pid"] > 0, "background start", bg)
        for _ in range(100):
            if (await sh(s, sid, "echo | nc 127.0.0.1 8080"))["exit_code"] == 0:
                break
            await asyncio.sleep(0.2)
        e = await ok(s, "expose_port", {"id": sid, "port": 8080})
        check(e["url"].startswith("http://127.0.0.1:") and e["token"], "expose_port", {**e, "token": "…"})
        body = ""
        # busybox httpd under this host's runsc now and then closes a
        # connection unanswered (see tests/network.rs): a few tries.
        for _ in range(10):
            try:
                req = urllib.request.Request(e["url"] + "/", headers={"X-Spinup-Token": e["token"]})
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=10).read().decode())
                break
            except (urllib.error.URLError, ConnectionError) as err:
                body = str(err)
                await asyncio.sleep(0.5)
        check("served-over-mcp" in body, "served through the exposed port", body)
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(e["url"] + "/", timeout=10).read())
            raise AssertionError("the exposed port answered without its token")
        except urllib.error.HTTPError as err:
            check(err.code == 401, "no token", err.code)
        log("expose_port: ok")

        # Errors: unknown sandboxes are tool errors; bad arguments protocol errors.
        for tool, args in [
            ("run_command", {"id": "0123456789ab", "cmd": "true"}),
            ("read_file", {"id": "0123456789ab", "path": "/etc/hostname"}),
            ("remove_sandbox", {"id": "not-an-id"}),
            ("snapshot", {"id": "0123456789ab"}),
            ("diff", {"id": "0123456789ab"}),
        ]:
            await tool_error(s, tool, args, "not_found")
        await tool_error(s, "create_sandbox", {"env": "no-such-env", "driver": driver}, "not_found")
        await tool_error(s, "diff", {"id": sid, "since": "no-such-snapshot"}, "not_found")
        # No python3 with Jupyter in the sandbox: a clear error.
        msg = await tool_error(s, "run_code", {"id": sid, "code": "1 + 1"}, "conflict")
        check("python3" in msg, "run_code without python3 says what it needs", msg)
        # Arguments the schema or the tool refuses: tool errors the model
        # sees (MCP 2025-11-25, SEP-1303), with the field named.
        for tool, args, says in [
            ("run_command", {"cmd": "true"}, "`id`"),
            ("run_command", {"id": sid}, "`cmd`"),
            ("run_command", {"id": sid, "cmd": "true", "argv": ["true"]}, "not both"),
            ("run_command", {"id": sid, "cmd": "true", "timeout_ms": "soon"}, "invalid type"),
            ("create_sandbox", {"env": env, "colour": "blue"}, "colour"),
            ("create_sandbox", {}, "`env`"),
            ("write_file", {"id": sid, "path": "/x", "content": "%%%", "encoding": "base64"}, "base64"),
            ("write_file", {"id": sid, "path": "/x", "content": "x", "encoding": "latin-1"}, "latin-1"),
            ("expose_port", {"id": sid, "port": 70000}, "70000"),
            ("run_code", {"id": sid}, "`code`"),
            ("run_code", {"id": sid, "code": "1", "language": "cobol"}, "cobol"),
        ]:
            msg = await tool_error(s, tool, args, "invalid_argument")
            check(says in msg, f"{tool} {args}: the error names the problem", msg)
        # What is wrong with the call itself is a protocol error.
        for tool, args in [
            ("no_such_tool", {}),
        ]:
            await protocol_error(s, tool, args)
        log("errors: ok")
    finally:
        for c in children:
            await s.call_tool("remove_sandbox", {"id": c})
        r = await s.call_tool("remove_sandbox", {"id": sid})
    check(not r.is_error and r.structured_content == {"removed": sid}, "remove_sandbox", r)
    await tool_error(s, "remove_sandbox", {"id": sid}, "not_found")
    left = await ok(s, "list_sandboxes", {"labels": {"mcp": tag}})
    check(left["sandboxes"] == [], "nothing left", left)


async def code(s, driver, env):
    """run_code in a sandbox of the code interpreter's environment."""
    sb = await ok(s, "create_sandbox", {"env": env, "driver": driver, "timeout_s": 900})
    sid = sb["id"]
    try:
        r = await ok(s, "run_code", {"id": sid, "code": "x = 6\nprint('side')\nx * 7"})
        main = [x for x in r["results"] if x["is_main_result"]]
        check(main and main[0]["data"]["text/plain"] == "42" and r["stdout"] == "side\n", "run_code result", r)
        r = await ok(s, "run_code", {"id": sid, "code": "x"})
        check(r["results"][0]["data"]["text/plain"] == "6", "run_code keeps state", r)
        r = await ok(s, "run_code", {"id": sid, "code": "int('no')"})
        check(r["error"]["name"] == "ValueError", "run_code error", r)
        raw = await s.call_tool(
            "run_code", {"id": sid, "code": "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()"}
        )
        images = [c for c in raw.content if getattr(c, "type", "") == "image"]
        check(images and images[0].mime_type == "image/png", "a chart is image content", raw.content)
        r = await ok(s, "run_code", {"id": sid, "code": "while True: pass", "timeout_s": 2})
        check(r["timed_out"] and r["error"]["name"] == "TimeoutError", "run_code timeout", r)
        r = await ok(s, "run_code", {"id": sid, "language": "javascript", "code": "x = 5; x + 1"})
        check(r["results"][0]["data"]["text/plain"] == "6", "run_code javascript", r)
        await tool_error(s, "run_code", {"id": sid, "code": "1", "context": "ctx-000000000000"}, "not_found")
        log("run_code: ok")
    finally:
        await s.call_tool("remove_sandbox", {"id": sid})


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("transport", choices=["stdio", "http"])
    p.add_argument("target", help="the spinup binary (stdio) or the /mcp URL (http)")
    p.add_argument("key", nargs="?", help="API key (http)")
    p.add_argument("--driver", default="container")
    p.add_argument("--env", default="busybox")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--code-env", help="also run_code in a sandbox of this environment")
    a = p.parse_args()

    async def full(s):
        await scenario(s, a.driver, a.env)
        if a.code_env:
            await code(s, a.driver, a.code_env)

    run = smoke if a.smoke else full
    if a.transport == "stdio":
        params = StdioServerParameters(command=a.target, args=["mcp"], env=dict(os.environ))
        async with stdio_client(params) as (r, w), ClientSession(r, w, read_timeout_seconds=120) as s:
            await run(s)
    else:
        # A wrong key is refused before MCP is spoken.
        async with create_mcp_http_client(headers={"Authorization": "Bearer wrong-key"}) as h:
            resp = await h.post(
                a.target,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Accept": "application/json, text/event-stream"},
            )
            check(resp.status_code == 401, "a wrong key", (resp.status_code, resp.text))
        async with create_mcp_http_client() as h:
            resp = await h.post(a.target, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            check(resp.status_code == 401, "no key", (resp.status_code, resp.text))
        log("wrong or missing key: 401")
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {a.key}"}) as h:
            async with streamable_http_client(a.target, http_client=h) as (r, w), ClientSession(
                r, w, read_timeout_seconds=120
            ) as s:
                await run(s)
    log("SCENARIO PASSED")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # an ExceptionGroup from anyio included
        import traceback

        traceback.print_exception(e)
        sys.exit(1)
