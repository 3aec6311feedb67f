"""Tests of interpreter.py, started the way the host starts it, over plain HTTP.

Run with a python that has jupyter_client, ipykernel, matplotlib and numpy
(node and bash on PATH):  python -m pytest crates/interpreter/guest
SPINUP_INTERPRETER_PYTHON picks another python for the server.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "interpreter.py")
PYTHON = os.environ.get("SPINUP_INTERPRETER_PYTHON", sys.executable)
BOOT = "import sys; exec(compile(sys.stdin.read(), 'spinup-interpreter', 'exec'))"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port):
    proc = subprocess.Popen([PYTHON, "-c", BOOT, "--port", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE)
    with open(SOURCE, "rb") as f:
        proc.stdin.write(f.read())
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
    raise AssertionError("the server did not listen")


class Server:
    def __init__(self, port, proc):
        self.port, self.proc = port, proc

    def call(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                text = resp.read()
                return resp.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def execute(self, code, **kw):
        """The run's events, checking that exactly one end comes, last."""
        req = urllib.request.Request("http://127.0.0.1:%d/execute" % self.port, method="POST",
                                     data=json.dumps(dict(kw, code=code)).encode())
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            events = [json.loads(line) for line in resp]
        assert [e["type"] for e in events].count("end") == 1 and events[-1]["type"] == "end", events
        return events

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def texts(events, kind):
    return "".join(e["text"] for e in events if e["type"] == kind)


def of(events, kind):
    return [e for e in events if e["type"] == kind]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    yield Server(port, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


def new_context(server, language, **kw):
    status, ctx = server.call("POST", "/contexts", dict(kw, language=language))
    assert status == 201, ctx
    return ctx["id"]


# --- basics -----------------------------------------------------------------

def test_health(server):
    status, body = server.call("GET", "/health")
    assert status == 200
    assert body == {"version": 1, "languages": {"python": None, "javascript": None, "bash": None}}


def test_python_result_and_state(server):
    events = server.execute("1+1")
    [result] = of(events, "result")
    assert result["is_main_result"] is True and result["data"]["text/plain"] == "2"
    assert isinstance(events[-1]["execution_count"], int)
    assert events[-1]["timed_out"] is False and events[-1]["truncated"] is False
    server.execute("x = 41")
    assert of(server.execute("x + 1"), "result")[0]["data"]["text/plain"] == "42"
    ids = [c["id"] for c in server.call("GET", "/contexts")[1]]
    assert "default-python" in ids


def test_python_streams_and_error(server):
    events = server.execute("import sys\nprint('hello')\nprint('oops', file=sys.stderr)")
    assert texts(events, "stdout") == "hello\n"
    assert texts(events, "stderr") == "oops\n"
    events = server.execute("def f():\n    return 1 / 0\nf()")
    [error] = of(events, "error")
    assert error["name"] == "ZeroDivisionError" and error["value"] == "division by zero"
    assert "ZeroDivisionError" in error["traceback"] and "\x1b" not in error["traceback"]
    assert "\n" in error["traceback"]


def test_python_display_data_and_json(server):
    events = server.execute("from IPython.display import display, JSON\n"
                            "display({'a': 1}, raw=False)\nJSON({'k': [1, 2]})")
    results = of(events, "result")
    assert [r["is_main_result"] for r in results] == [False, True]
    assert results[1]["data"]["application/json"] == {"k": [1, 2]}


def test_matplotlib_png(server):
    events = server.execute("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    pngs = [r for r in of(events, "result") if "image/png" in r["data"]]
    assert len(pngs) == 1 and pngs[0]["is_main_result"] is False, events
    import base64
    assert base64.b64decode(pngs[0]["data"]["image/png"]).startswith(b"\x89PNG")
    # A figure as the last expression is shown too.
    events = server.execute("fig = plt.figure(); plt.plot([1, 2]); fig")
    assert any("image/png" in r["data"] for r in of(events, "result")), events


# --- contexts ---------------------------------------------------------------

def test_contexts_lifecycle(server):
    cwd = "/tmp"
    ctx = new_context(server, "python", cwd=cwd)
    assert ctx.startswith("ctx-") and len(ctx) == 16
    listed = server.call("GET", "/contexts")[1]
    assert {"id": ctx, "language": "python", "cwd": cwd} in listed
    assert texts(server.execute("import os; print(os.getcwd()); a = 7", context_id=ctx), "stdout") == cwd + "\n"
    assert of(server.execute("a", context_id=ctx), "result")[0]["data"]["text/plain"] == "7"
    status, body = server.call("POST", "/contexts/%s/restart" % ctx)
    assert status == 200 and body["id"] == ctx
    [error] = of(server.execute("a", context_id=ctx), "error")
    assert error["name"] == "NameError"
    status, body = server.call("POST", "/execute", {"code": "1", "context_id": ctx, "language": "bash"})
    assert status == 400 and body["code"] == "invalid_argument"
    assert server.call("DELETE", "/contexts/" + ctx) == (204, None)
    assert ctx not in [c["id"] for c in server.call("GET", "/contexts")[1]]
    for method, path, body in [("DELETE", "/contexts/" + ctx, None),
                               ("POST", "/contexts/ctx-000000000000/restart", None),
                               ("POST", "/execute", {"code": "1", "context_id": ctx})]:
        status, answer = server.call(method, path, body)
        assert status == 404 and answer["code"] == "not_found", (method, path, answer)


def test_bad_requests(server):
    cases = [
        ("POST", "/execute", None, b"{not json", 400),
        ("POST", "/execute", {"code": 1}, None, 400),
        ("POST", "/execute", {"code": "1", "language": "cobol"}, None, 400),
        ("POST", "/execute", {"code": "1", "timeout_ms": "5"}, None, 400),
        ("POST", "/execute", {"code": "1", "env_vars": {"A": 1}}, None, 400),
        ("POST", "/contexts", {"cwd": "/no/such/dir"}, None, 400),
        ("POST", "/contexts", {"language": "ruby"}, None, 400),
        ("GET", "/nowhere", None, None, 404),
        ("GET", "/execute", None, None, 405),
        ("POST", "/execute", None, b"x" * (17 << 20), 413),
    ]
    for method, path, body, raw, want in cases:
        status, answer = server.call(method, path, body, raw)
        assert status == want, (path, body, answer)
        assert set(answer) == {"code", "message"}


# --- javascript and bash ------------------------------------------------------

def test_javascript(server):
    ctx = new_context(server, "javascript")
    server.execute("globalThis.y = 1; var z = 2; let w = 3", context_id=ctx)
    events = server.execute("console.log('sum', y + z + w); console.error('warned'); ({a: [1, 2]})",
                            context_id=ctx)
    assert texts(events, "stdout") == "sum 6\n" and texts(events, "stderr") == "warned\n"
    [result] = of(events, "result")
    assert result["is_main_result"] and result["data"]["application/json"] == {"a": [1, 2]}
    assert result["data"]["text/plain"] == "{ a: [ 1, 2 ] }"
    assert of(server.execute("Promise.resolve(40 + 2)", context_id=ctx), "result")[0]["data"] == {"text/plain": "42"}
    assert of(server.execute("require('path').join('a', 'b')", context_id=ctx), "result")[0]["data"]["text/plain"] == "'a/b'"
    [error] = of(server.execute("throw new TypeError('bad thing')", context_id=ctx), "error")
    assert error["name"] == "TypeError" and error["value"] == "bad thing" and "bad thing" in error["traceback"]
    assert "node:" not in error["traceback"]
    events = server.execute("const t = await new Promise((ok) => setTimeout(() => ok(5), 10)); t * 2", context_id=ctx)
    assert of(events, "result")[0]["data"]["text/plain"] == "10", events
    assert of(server.execute("t", context_id=ctx), "result")[0]["data"]["text/plain"] == "5"
    events = server.execute("while (true) {}", context_id=ctx, timeout_ms=1000)
    assert [e["name"] for e in of(events, "error")] == ["TimeoutError"] and events[-1]["timed_out"]
    events = server.execute("new Promise(() => {})", context_id=ctx, timeout_ms=1000)
    assert [e["name"] for e in of(events, "error")] == ["TimeoutError"] and events[-1]["timed_out"]
    assert of(server.execute("y + z", context_id=ctx), "result")[0]["data"]["text/plain"] == "3"
    events = server.execute("process.stdout.write('raw\\n'); process.env.SPINUP_T", context_id=ctx,
                            env_vars={"SPINUP_T": "js"})
    assert texts(events, "stdout") == "raw\n" and of(events, "result")[0]["data"]["text/plain"] == "'js'"
    assert of(server.execute("process.env.SPINUP_T", context_id=ctx), "result") == []
    [error] = of(server.execute("process.exit(4)", context_id=ctx), "error")
    assert error["name"] == "KernelDied" and "status 4" in error["value"]
    assert of(server.execute("typeof y", context_id=ctx), "result")[0]["data"]["text/plain"] == "'undefined'"
    server.call("DELETE", "/contexts/" + ctx)


def test_bash(server):
    ctx = new_context(server, "bash")
    assert server.execute("cd /tmp; export FOO=bar; echo started", context_id=ctx)[0] == {"type": "stdout", "text": "started\n"}
    events = server.execute("pwd; echo $FOO; bash -c 'echo $FOO'; echo err >&2", context_id=ctx)
    assert texts(events, "stdout") == "/tmp\nbar\nbar\n" and texts(events, "stderr") == "err\n"
    assert of(events, "error") == []
    events = server.execute("cat; read line; echo done", context_id=ctx, timeout_ms=5000)
    assert texts(events, "stdout") == "done\n" and not events[-1]["timed_out"]
    [error] = of(server.execute("echo before; false", context_id=ctx), "error")
    assert error == {"type": "error", "name": "ExitStatus", "value": "exit status 1", "traceback": ""}
    events = server.execute("printf 'no newline'", context_id=ctx)
    assert texts(events, "stdout") == "no newline"
    events = server.execute("sleep 30", context_id=ctx, timeout_ms=1000)
    assert [e["name"] for e in of(events, "error")] == ["TimeoutError"] and events[-1]["timed_out"]
    events = server.execute("while true; do :; done", context_id=ctx, timeout_ms=1000)
    assert [e["name"] for e in of(events, "error")] == ["TimeoutError"]
    events = server.execute("set -x; echo traced", context_id=ctx)
    assert texts(events, "stdout") == "traced\n"  # and the run ended: the traced sentinel is no sentinel
    assert of(server.execute("set +x", context_id=ctx), "error") == []
    events = server.execute("exec >/dev/null; echo hidden", context_id=ctx)
    assert texts(events, "stdout") == ""
    events = server.execute("echo $FOO $SPINUP_T", context_id=ctx, env_vars={"SPINUP_T": "it's"})
    assert texts(events, "stdout") == "bar it's\n"
    assert texts(server.execute("echo ${SPINUP_T-unset} $PWD", context_id=ctx), "stdout") == "unset /tmp\n"
    [error] = of(server.execute("exit 5", context_id=ctx), "error")
    assert error["name"] == "KernelDied" and "status 5" in error["value"]
    assert texts(server.execute("echo again", context_id=ctx), "stdout") == "again\n"
    server.call("DELETE", "/contexts/" + ctx)


# --- timeouts, deaths, floods, disconnects ----------------------------------

def test_python_timeout_keeps_state(server):
    ctx = new_context(server, "python")
    server.execute("kept = 'yes'", context_id=ctx)
    started = time.monotonic()
    events = server.execute("while True: pass", context_id=ctx, timeout_ms=2000)
    assert time.monotonic() - started < 8
    errors = of(events, "error")
    assert [e["name"] for e in errors] == ["TimeoutError"], events
    assert "timeout of 2 s" in errors[0]["value"] and "keeps its state" in errors[0]["value"]
    assert events[-1]["timed_out"] is True
    assert of(server.execute("1+1", context_id=ctx), "result")[0]["data"]["text/plain"] == "2"
    assert of(server.execute("kept", context_id=ctx), "result")[0]["data"]["text/plain"] == "'yes'"
    server.call("DELETE", "/contexts/" + ctx)


def test_stuck_kernels_are_restarted(server):
    for language, setup, code in [
            ("python", "kept = 1", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"),
            ("javascript", "var kept = 1", "setTimeout(() => { for (;;) {} }, 0); new Promise(() => {})")]:
        ctx = new_context(server, language)
        server.execute(setup, context_id=ctx)
        started = time.monotonic()
        events = server.execute(code, context_id=ctx, timeout_ms=1000)
        assert time.monotonic() - started < 12
        [error] = of(events, "error")
        assert error["name"] == "TimeoutError" and "was restarted; its state is lost" in error["value"], error
        assert events[-1]["timed_out"]
        [error] = of(server.execute("kept", context_id=ctx), "error")
        assert "kept" in error["value"], error
        server.call("DELETE", "/contexts/" + ctx)


def test_delete_during_execution(server):
    ctx = new_context(server, "bash")
    got = []
    thread = threading.Thread(target=lambda: got.extend(server.execute("sleep 60", context_id=ctx)))
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert server.call("DELETE", "/contexts/" + ctx) == (204, None)
    thread.join(10)
    assert time.monotonic() - started < 3
    assert [e["name"] for e in of(got, "error")] == ["ContextClosed"]


def test_python_kernel_death(server):
    ctx = new_context(server, "python")
    events = server.execute("import os; os._exit(1)", context_id=ctx)
    [error] = of(events, "error")
    assert error["name"] == "KernelDied" and "status 1" in error["value"], error
    assert of(server.execute("1+1", context_id=ctx), "result")[0]["data"]["text/plain"] == "2"
    server.call("DELETE", "/contexts/" + ctx)


def test_output_flood_is_bounded(server):
    ctx = new_context(server, "python")
    req = urllib.request.Request("http://127.0.0.1:%d/execute" % server.port, method="POST", data=json.dumps(
        {"code": "for _ in range(2048): print('x' * (1 << 20))", "context_id": ctx}).encode())
    peak, size, markers, last = 0, 0, 0, None
    with urllib.request.urlopen(req, timeout=300) as resp:
        for n, line in enumerate(resp):
            event = json.loads(line)
            if event["type"] == "stdout":
                size += len(event["text"])
            elif event["type"] == "stderr":
                markers += "dropped" in event["text"]
            last = event
            if n % 8 == 0:
                peak = max(peak, server.rss_kib())
    assert last["type"] == "end" and last["truncated"] is True and not last["timed_out"]
    assert size == 8 << 20 and markers == 1
    peak = max(peak, server.rss_kib())
    print("server RSS peak: %d KiB" % peak)
    assert peak < 200 * 1024, "server RSS peaked at %d KiB" % peak
    # The context is usable right after, and its memory stayed bounded there too.
    assert of(server.execute("1+1", context_id=ctx), "result")[0]["data"]["text/plain"] == "2"
    server.call("DELETE", "/contexts/" + ctx)


def test_disconnect_frees_context(server):
    ctx = new_context(server, "python")
    body = json.dumps({"code": "import time\nprint('sleeping', flush=True)\ntime.sleep(120)", "context_id": ctx})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
    answer = b""
    while b"sleeping" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 ")
    sock.close()
    started = time.monotonic()
    assert of(server.execute("1+1", context_id=ctx), "result")[0]["data"]["text/plain"] == "2"
    assert time.monotonic() - started < 5
    server.call("DELETE", "/contexts/" + ctx)


def test_parallel_contexts(server):
    a, b = new_context(server, "python"), new_context(server, "python")

    def sleep(ctx):
        server.execute("import time; time.sleep(2)", context_id=ctx)

    started = time.monotonic()
    threads = [threading.Thread(target=sleep, args=(c,)) for c in (a, b, a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.monotonic() - started
    assert 4 <= total < 5.8, total   # a's two runs queue up; b's runs beside them (all serial: 6 s)
    for ctx in (a, b):
        server.call("DELETE", "/contexts/" + ctx)


def test_env_vars_apply_to_one_run(server):
    code = "import os; os.environ.get('SPINUP_T')"
    events = server.execute(code, env_vars={"SPINUP_T": "value", "HOME": "/elsewhere"})
    assert of(events, "result")[0]["data"]["text/plain"] == "'value'"
    assert of(server.execute(code), "result") == []  # None shows nothing
    assert of(server.execute("raise ValueError(os.environ['SPINUP_T'])", env_vars={"SPINUP_T": "v2"}),
              "error")[0]["value"] == "v2"
    assert of(server.execute(code), "result") == []
    assert of(server.execute("os.environ['HOME'] != '/elsewhere'"), "result")[0]["data"]["text/plain"] == "True"


# --- the process itself --------------------------------------------------------

def test_missing_runtimes(tmp_path):
    """A python without jupyter_client, and a PATH without node and bash."""
    bare = subprocess.run(["python3", "-c", "import sys, importlib.util; print(sys.executable) if not "
                           "importlib.util.find_spec('jupyter_client') else None"],
                          capture_output=True, text=True).stdout.strip()
    if not bare:
        pytest.skip("no python3 without jupyter_client here")
    port = free_port()
    old = os.environ["PATH"], PYTHON
    os.environ["PATH"], globals()["PYTHON"] = str(tmp_path), bare
    try:
        proc = start_server(port)
    finally:
        os.environ["PATH"], globals()["PYTHON"] = old
    srv = Server(port, proc)
    try:
        languages = srv.call("GET", "/health")[1]["languages"]
        assert "python3-jupyter-client python3-ipykernel" in languages["python"]
        assert "node" in languages["javascript"] and "bash" in languages["bash"]
        for language in ("python", "javascript", "bash"):
            status, body = srv.call("POST", "/contexts", {"language": language})
            assert status == 503 and body["code"] == "unavailable" and body["message"] == languages[language]
            status, body = srv.call("POST", "/execute", {"code": "1", "language": language})
            assert status == 503 and body["code"] == "unavailable"
        assert srv.call("GET", "/contexts") == (200, [])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_second_copy_exits_3(server):
    proc = subprocess.Popen([PYTHON, "-c", BOOT, "--port", str(server.port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(SOURCE, "rb") as f:
        out, err = proc.communicate(f.read(), timeout=30)
    assert proc.returncode == 3 and out == b"" and err.count(b"\n") == 1, err


def test_sigterm_stops_kernels():
    port = free_port()
    proc = start_server(port)
    srv = Server(port, proc)
    pids = []
    for language, code in [("python", "import os; print(os.getpid())"), ("bash", "echo $$"),
                           ("javascript", "console.log(process.pid)")]:
        pids.append(int(texts(srv.execute(code, language=language), "stdout")))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
