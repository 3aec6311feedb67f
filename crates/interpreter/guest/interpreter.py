"""Spinup code interpreter: an HTTP server that runs code inside a sandbox.

The host starts this file as

    python3 -c "import sys; exec(compile(sys.stdin.read(), 'spinup-interpreter', 'exec'))" --port 49999

with the file's text on stdin, so it uses only the standard library; jupyter_client
is imported when the first Python context needs it.  Each context owns one kernel:
an IPython kernel (python), a node process running NODE_DRIVER (javascript) or an
interactive bash (bash).  POST /execute answers with NDJSON events, one a line:
stdout, stderr, result, error, and always a last "end".
"""

import argparse
import codecs
import importlib.util
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

LANGUAGES = ("python", "javascript", "bash")
MAX_BODY = 16 << 20           # bytes in one request body
OUTPUT_LIMIT = 8 << 20        # event payload of one execution
PIECE = 1 << 20               # characters of text in one event, at most
DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 86_400_000
GRACE = 5.0                   # seconds a kernel gets to become idle after an interrupt
TICK = 0.25                   # seconds between checks of deadline, client and kernel
TMP = "/tmp/.spinup-interpreter-%d" % os.getuid()
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message):
    return ApiError(400, "invalid_argument", message)


def unavailable_reason(language):
    """Why `language` cannot run in this sandbox, or None when it can."""
    if language == "python":
        if not (importlib.util.find_spec("jupyter_client") and importlib.util.find_spec("ipykernel")):
            return ("python needs jupyter_client and ipykernel, which this sandbox lacks (Debian: "
                    "apt-get install python3-jupyter-client python3-ipykernel; the code-interpreter "
                    "environment has them)")
    elif language == "javascript":
        if not shutil.which("node"):
            return ("javascript needs node, which this sandbox lacks (Debian: apt-get install nodejs; "
                    "the code-interpreter environment has it)")
    elif not shutil.which("bash"):
        return "bash needs bash, which this sandbox lacks (Debian: apt-get install bash)"
    return None


def describe_exit(status):
    return "signal %d" % -status if status < 0 else "status %d" % status


# ---------------------------------------------------------------------------
# One execution's output: the budget, the deadline and the client.

class Run:
    def __init__(self, handler, context, timeout_ms):
        self.wfile, self.sock, self.context = handler.wfile, handler.connection, context
        self.timeout_ms = timeout_ms
        self.deadline = time.monotonic() + timeout_ms / 1000
        self.left = OUTPUT_LIMIT
        self.truncated = self.timed_out = self.gone = False
        self.interrupted_at = None     # when the kernel was interrupted
        self.checked = 0.0

    @property
    def interrupted(self):
        return self.interrupted_at is not None

    def remaining_ms(self):
        return max(1, int((self.deadline - time.monotonic()) * 1000))

    def send(self, event):
        self._write((json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace"))

    def _write(self, line):
        if self.gone:
            return
        try:
            self.wfile.write(line)
        except OSError:           # BrokenPipe, ConnectionReset, or a client that stopped reading
            self.gone = True

    def _spend(self, size):
        """Takes `size` from the budget; False (and a note, once) when it is spent."""
        if size <= self.left:
            self.left -= size
            return True
        if not self.truncated:
            self.truncated, self.left = True, 0
            self.send({"type": "stderr", "text": "\n[spinup: output past 8 MiB was dropped]\n"})
        return False

    def stream(self, name, text):
        # In pieces of at most 1 MiB, so that no line gets near the host's 16 MiB.
        for start in range(0, len(text), PIECE):
            if self.truncated:
                return
            piece = text[start:start + PIECE]
            if piece[:self.left]:
                self.send({"type": name, "text": piece[:self.left]})
            self._spend(len(piece))

    def result(self, data, main):
        if not self.truncated:
            line = (json.dumps({"type": "result", "is_main_result": main, "data": data},
                               ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")
            if self._spend(len(line)):
                self._write(line)

    def error(self, name, value, traceback="", force=False):
        # Once interrupted, the kernel's own report (KeyboardInterrupt, ...) is noise.
        if force or not self.interrupted:
            clean = lambda text: ANSI.sub("", text[:PIECE])
            self.send({"type": "error", "name": clean(name), "value": clean(value), "traceback": clean(traceback)})

    def end(self, count):
        self.send({"type": "end", "execution_count": count, "timed_out": self.timed_out,
                   "truncated": self.truncated})

    def check(self):
        """None, "interrupt" (deadline passed or client gone) or "abort" (context closing)."""
        if self.context.closing:
            return "abort"
        now = time.monotonic()
        if now >= self.deadline:
            self.timed_out = True
            return "interrupt"
        if not self.gone and now - self.checked >= TICK:
            self.checked = now
            try:  # The client sends nothing after its request: readable means it hung up.
                if select.select([self.sock], [], [], 0)[0] and not self.sock.recv(1, socket.MSG_PEEK):
                    self.gone = True
            except OSError:
                self.gone = True
        return "interrupt" if self.gone else None


class Kernel:
    """What the three kinds of kernel share; each has its own execute, interrupt and close.

    execute(run, code, env) forwards the run's output to `run` and returns
    (execution_count, outcome), the outcome being "ok", "interrupted" (and idle
    again), "stuck" (not idle within GRACE of the interrupt), "died" or "aborted"
    (the context is being deleted or restarted).
    """

    interrupt_delay = 0.0  # seconds past the deadline before interrupting

    def exit_status(self):
        return self.proc.poll()

    def watch(self, run):
        """Interrupts a run when needed; returns an outcome when the wait must stop."""
        verdict = run.check()
        if verdict == "abort":
            return "aborted"
        if self.exit_status() is not None:
            return "died"
        late = run.gone or time.monotonic() >= run.deadline + self.interrupt_delay
        if verdict == "interrupt" and not run.interrupted and late:
            run.interrupted_at = time.monotonic()
            try:
                self.interrupt()
            except Exception:  # a kernel that just exited: the next look sees it
                pass
        if run.interrupted and time.monotonic() - run.interrupted_at > GRACE:
            return "stuck"
        return None


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# python: an IPython kernel, spoken to over its own zmq sockets so that every
# request thread can use it (jupyter_client's clients are tied to asyncio loops).

PY_SETUP = r'''
def _spinup_setup():
    import os, sys, types
    helpers = types.ModuleType("_spinup")
    def setenv(env):
        helpers.saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
    def restoreenv():
        for k, v in helpers.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    helpers.setenv, helpers.restoreenv = setenv, restoreenv
    sys.modules["_spinup"] = helpers
    try:
        from ipykernel.iostream import OutStream
    except Exception:
        return
    # Send output in messages of at most 256 KiB: the kernel would otherwise gather
    # all it printed in 0.2 s into one message, hundreds of MB for a fast printer.
    write, piece = OutStream.write, 1 << 18
    def bounded_write(self, string):
        if not isinstance(string, str) or len(string) <= piece:
            n = write(self, string)
            buffer = getattr(self, "_buffer", None)
            if buffer is not None and buffer.tell() >= piece:
                self.flush()
            return n
        for start in range(0, len(string), piece):
            write(self, string[start:start + piece])
            self.flush()
        return len(string)
    OutStream.write = bounded_write
_spinup_setup()
del _spinup_setup
'''


class PythonKernel(Kernel):
    def __init__(self, cwd, workdir):
        import jupyter_client
        import zmq
        self.zmq = zmq
        env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
        self.log_path = os.path.join(workdir, "kernel.log")
        self.km = jupyter_client.KernelManager(
            kernel_name="python3", connection_file=os.path.join(workdir, "kernel.json"))
        with open(self.log_path, "wb") as log:
            self.km.start_kernel(cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.proc = self.km.provisioner.process
        self.session = self.km.session
        info = self.km.get_connection_info()

        def url(port):
            if info["transport"] == "tcp":
                return "tcp://%s:%d" % (info["ip"], info[port])
            return "ipc://%s-%d" % (info["ip"], info[port])

        context = zmq.Context.instance()
        self.shell = context.socket(zmq.DEALER)
        self.iopub = context.socket(zmq.SUB)
        for sock in (self.shell, self.iopub):
            sock.setsockopt(zmq.LINGER, 0)
        # Bound what zmq may queue here: 64 messages, each of at most 64 MiB.
        self.iopub.setsockopt(zmq.RCVHWM, 64)
        self.iopub.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.shell.connect(url("shell_port"))
        self.iopub.connect(url("iopub_port"))
        try:
            self._wait_ready(120)
        except Exception:
            self.close()
            raise
        self._request(PY_SETUP, silent=True)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_status() is not None:
                with open(self.log_path, "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                raise ApiError(503, "unavailable", "the python kernel exited while starting: " + tail)
            # An iopub message for our request shows that both sockets are connected.
            msg_id = self.session.send(self.shell, "kernel_info_request", {})["header"]["msg_id"]
            end = time.monotonic() + 1
            while time.monotonic() < end:
                if self.iopub.poll(100):
                    msg = self._recv(self.iopub, content=False)
                    if msg and msg["parent_header"].get("msg_id") == msg_id:
                        return
        raise ApiError(503, "unavailable", "the python kernel did not answer within %d s" % timeout)

    def _recv(self, sock, content=True):
        try:
            _, msg = self.session.recv(sock, mode=self.zmq.NOBLOCK, content=content)
        except Exception:  # a message that fails to parse or to authenticate
            return None
        return msg

    def _request(self, code, silent=False):
        # stop_on_error would make the kernel drop requests queued behind an error.
        content = {"code": code, "silent": silent, "store_history": not silent,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}
        return self.session.send(self.shell, "execute_request", content)["header"]["msg_id"]

    def interrupt(self):
        self.km.interrupt_kernel()

    def execute(self, run, code, env):
        if env:
            self._request("__import__('_spinup').setenv(%r)" % env, silent=True)
        msg_id = self._request(code)
        if env:  # queued behind the code, so it runs however the code ends
            self._request("__import__('_spinup').restoreenv()", silent=True)
        count, replied = None, None
        poller = self.zmq.Poller()
        poller.register(self.shell, self.zmq.POLLIN)
        poller.register(self.iopub, self.zmq.POLLIN)
        while True:
            verdict = self.watch(run)
            if verdict:
                return count, verdict
            ready = dict(poller.poll(TICK * 1000))
            while self.shell in ready:
                msg = self._recv(self.shell)
                if msg is None:
                    break
                if msg["parent_header"].get("msg_id") == msg_id:
                    replied = time.monotonic()
                    count = msg["content"].get("execution_count", count)
            idle = False
            for _ in range(256 if self.iopub in ready else 0):
                msg = self._recv(self.iopub, content=False)
                if msg is None:
                    break
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream" and run.truncated:
                    continue  # not even worth parsing
                content = self.session.unpack(msg["content"])
                if kind == "stream":
                    run.stream("stderr" if content.get("name") == "stderr" else "stdout", content.get("text", ""))
                elif kind == "execute_input":
                    count = content.get("execution_count", count)
                elif kind in ("execute_result", "display_data"):
                    run.result(content.get("data", {}), kind == "execute_result")
                elif kind == "error":
                    run.error(content.get("ename", "Error"), content.get("evalue", ""),
                              "\n".join(content.get("traceback", [])))
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
                    break
            # Without an idle status 2 s after the reply, zmq dropped it in a flood of output.
            if not idle and (replied is None or time.monotonic() - replied < 2):
                continue
            return count, "interrupted" if run.interrupted else "ok"

    def close(self):
        for sock in (self.shell, self.iopub):
            sock.close(linger=0)
        kill_group(self.proc)
        try:
            self.km.shutdown_kernel(now=True)
        except Exception:
            pass


# ---------------------------------------------------------------------------
# javascript: node runs DRIVER, which reads requests as JSON lines from one pipe
# and answers with JSON lines on another; node's own stdout and stderr are
# forwarded too.  The driver's stdin is /dev/null, so code cannot eat requests.

NODE_DRIVER = r'''
"use strict";
const fs = require("fs"), net = require("net"), readline = require("readline");
const util = require("util"), vm = require("vm"), Module = require("module"), { Writable } = require("stream");
const [replyFd, requestFd] = process.argv.splice(1, 2).map(Number);
// Blocking pipes: what code writes to process.stdout is out before its "done".
for (const stream of [process.stdout, process.stderr]) stream._handle?.setBlocking?.(true);

function send(msg) {
  const buf = Buffer.from(JSON.stringify(msg) + "\n");
  for (let off = 0; off < buf.length;) {
    try { off += fs.writeSync(replyFd, buf, off); } catch (e) { if (e.code !== "EAGAIN") throw e; }
  }
}
function emit(type, text) {  // in pieces, so that no reply line grows huge
  for (let i = 0; i < text.length; i += 65536) send({ type, text: text.slice(i, i + 65536) });
}
const sink = (type) => new Writable({ decodeStrings: false, write(chunk, enc, done) { emit(type, String(chunk)); done(); } });

const sandbox = {
  console: new console.Console({ stdout: sink("stdout"), stderr: sink("stderr"), colorMode: false }),
  require: Module.createRequire(process.cwd() + "/"), process, Buffer,
};
for (const name of ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "setImmediate",
    "clearImmediate", "queueMicrotask", "URL", "URLSearchParams", "TextEncoder", "TextDecoder", "fetch",
    "Headers", "Request", "Response", "FormData", "Blob", "AbortController", "AbortSignal", "Event",
    "EventTarget", "structuredClone", "atob", "btoa", "performance", "crypto"]) {
  if (name in globalThis) sandbox[name] = globalThis[name];
}
const context = vm.createContext(sandbox);
vm.runInContext("globalThis.global = globalThis", context);

// Top-level await: node's REPL rewrites such code into an async function.
let processTopLevelAwait = null;
try { ({ processTopLevelAwait } = require("internal/repl/await")); } catch (e) { /* plain scripts only */ }

let interrupt = null;  // rejects the awaited promise of the running request
const INTERRUPTED = Symbol("interrupted");
process.on("SIGINT", () => { if (interrupt) interrupt(INTERRUPTED); });
process.on("uncaughtException", (e) => emit("stderr", "Uncaught " + util.inspect(e) + "\n"));
process.on("unhandledRejection", (e) => emit("stderr", "Uncaught (in promise) " + util.inspect(e) + "\n"));

function bundle(value) {
  const data = { "text/plain": util.inspect(value) };
  if (value !== null && typeof value === "object") {
    try {
      const text = JSON.stringify(value);
      if (text !== undefined && text.length < (8 << 20)) data["application/json"] = JSON.parse(text);
    } catch (e) { /* not JSON: text/plain only */ }
  }
  return data;
}

const thenable = (v) => v !== null && (typeof v === "object" || typeof v === "function") && typeof v.then === "function";
const awaited = (promise) => new Promise((resolve, reject) => { interrupt = reject; promise.then(resolve, reject); });
// The stack without the driver's own frames.
function trim(stack) {
  const lines = String(stack).split("\n"), end = lines.findIndex((line) => line.includes("node:vm:"));
  return (end < 0 ? lines : lines.slice(0, end)).join("\n");
}

async function run(req) {
  const saved = {}, reply = { type: "done", id: req.id, interrupted: false };
  for (const [k, v] of Object.entries(req.env || {})) {
    saved[k] = Object.prototype.hasOwnProperty.call(process.env, k) ? process.env[k] : undefined;
    process.env[k] = v;
  }
  try {
    let code = null;
    try { code = processTopLevelAwait && req.code.includes("await") ? processTopLevelAwait(req.code) : null; } catch (e) { }
    let value = vm.runInContext(code || req.code, context, { filename: "<code>", timeout: req.timeout_ms, breakOnSigint: true });
    if (code) value = ((await awaited(value)) || {}).value;
    if (thenable(value)) value = await awaited(value);
    if (value !== undefined) send({ type: "result", data: bundle(value) });
  } catch (e) {
    if (e === INTERRUPTED || (e && (e.code === "ERR_SCRIPT_EXECUTION_TIMEOUT" || e.code === "ERR_SCRIPT_EXECUTION_INTERRUPTED"))) {
      reply.interrupted = true;
    } else if (e !== null && typeof e === "object" && typeof e.message === "string") {
      send({ type: "error", name: String(e.name || "Error"), value: e.message, traceback: trim(e.stack || "") });
    } else {
      send({ type: "error", name: "Error", value: util.inspect(e), traceback: "" });
    }
  } finally {
    interrupt = null;
    for (const [k, v] of Object.entries(saved)) { if (v === undefined) delete process.env[k]; else process.env[k] = v; }
  }
  send(reply);
}

let queue = Promise.resolve();
const requests = readline.createInterface({ input: new net.Socket({ fd: requestFd, readable: true, writable: false }) });
requests.on("line", (line) => { const req = JSON.parse(line); queue = queue.then(() => run(req)); });
requests.on("close", () => process.exit(0));
send({ type: "ready" });
'''


class LineReader:
    """Splits bytes into lines, dropping any line longer than `limit`."""

    def __init__(self, limit=MAX_BODY):
        self.parts, self.size, self.limit, self.skipping = [], 0, limit, False

    def feed(self, data):
        lines = []
        while data:
            nl = data.find(b"\n")
            piece, data = (data, b"") if nl < 0 else (data[:nl], data[nl + 1:])
            if not self.skipping:
                self.parts.append(piece)
                self.size += len(piece)
                self.skipping = self.size > self.limit
            if nl >= 0:
                if not self.skipping:
                    lines.append(b"".join(self.parts))
                self.parts, self.size, self.skipping = [], 0, False
        return lines


class NodeKernel(Kernel):
    # The driver's vm timeout stops synchronous code at the deadline; a SIGINT
    # at that very moment could find node between vm's SIGINT watchdog and its
    # own handler, and kill it.  So the SIGINT, for a pending promise, comes later.
    interrupt_delay = 1.0

    def __init__(self, cwd, workdir):
        reply_r, reply_w = os.pipe()
        request_r, request_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [shutil.which("node"), "--expose-internals", "-e", NODE_DRIVER, str(reply_w), str(request_r)],
                cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(reply_w, request_r), start_new_session=True)
        finally:
            os.close(reply_w)
            os.close(request_r)
        self.replies, self.requests = reply_r, request_w
        os.set_blocking(request_w, False)  # written between reads: node may be blocked writing
        self.lines = LineReader()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.exit_status() is None:
            if select.select([reply_r], [], [], TICK)[0]:
                for line in self.lines.feed(os.read(reply_r, 65536)):
                    if json.loads(line).get("type") == "ready":
                        return
        error = self.proc.stderr.read1(4000).decode("utf-8", "replace") if self.exit_status() is not None else ""
        self.close()
        raise ApiError(503, "unavailable", "node did not start: " + (error or "no answer within 30 s"))

    def interrupt(self):
        os.kill(self.proc.pid, signal.SIGINT)

    def execute(self, run, code, env):
        req_id = secrets.token_hex(8)
        request = {"id": req_id, "code": code, "env": env, "timeout_ms": run.remaining_ms()}
        pending = memoryview(json.dumps(request).encode() + b"\n")
        outs = {self.proc.stdout.fileno(): ("stdout", codecs.getincrementaldecoder("utf-8")("replace")),
                self.proc.stderr.fileno(): ("stderr", codecs.getincrementaldecoder("utf-8")("replace"))}
        done = False
        while not done:
            verdict = self.watch(run)
            if verdict:
                self._drain(run, outs, 0.2 if verdict == "died" else 0)
                return None, verdict
            readable, writable, _ = select.select([self.replies, *outs], [self.requests] if pending else [], [], TICK)
            if writable:
                try:
                    pending = pending[os.write(self.requests, pending[:65536]):]
                except BlockingIOError:
                    pass
                except OSError:  # node is gone, as watch() will see
                    pending = pending[:0]
            for fd in readable:
                data = os.read(fd, 65536)
                if fd in outs:
                    name, decoder = outs[fd]
                    run.stream(name, decoder.decode(data))
                    continue
                for line in self.lines.feed(data):
                    if run.truncated and line.startswith(b'{"type":"std'):
                        continue  # not even worth parsing
                    msg = json.loads(line)
                    kind = msg.get("type")
                    if kind in ("stdout", "stderr"):
                        run.stream(kind, msg["text"])
                    elif kind == "result":
                        run.result(msg["data"], True)
                    elif kind == "error":
                        run.error(msg["name"], msg["value"], msg["traceback"])
                    elif kind == "done" and msg.get("id") == req_id:
                        done = True
                        if msg.get("interrupted") and not run.interrupted:
                            run.interrupted_at = time.monotonic()  # by the vm's own timeout
                            run.timed_out = True
        self._drain(run, outs, 0)  # what the code wrote to fd 1 and 2 just before it finished
        return None, "interrupted" if run.interrupted else "ok"

    def _drain(self, run, outs, wait):
        end = time.monotonic() + wait
        while True:
            ready = select.select(list(outs), [], [], max(0, end - time.monotonic()))[0]
            data = [(fd, os.read(fd, 65536)) for fd in ready]
            if not any(chunk for _, chunk in data):
                return
            for fd, chunk in data:
                run.stream(outs[fd][0], outs[fd][1].decode(chunk))

    def close(self):
        kill_group(self.proc)
        self.proc.wait()
        for fd in (self.replies, self.requests):
            os.close(fd)
        self.proc.stdout.close()
        self.proc.stderr.close()


# ---------------------------------------------------------------------------
# bash: an interactive bash (so that SIGINT abandons the running command and
# bash reads the next one) reading commands from a pipe; the code itself runs
# with stdin from /dev/null.  A random token marks where each run ends.

class Sentinel:
    """Separates a stream's output from the line `TOKEN[status]\\n` that ends a run."""

    def __init__(self, token):
        self.token, self.buf, self.status = token, b"", None

    def feed(self, data):
        if self.status is not None:
            return data
        self.buf += data
        at = self.buf.find(self.token)
        if at >= 0:
            nl = self.buf.find(b"\n", at)
            if nl < 0:
                out, self.buf = self.buf[:at], self.buf[at:]
                return out
            self.status = self.buf[at + len(self.token):nl].decode()
            out, self.buf = self.buf[:at] + self.buf[nl + 1:], b""
            return out
        # Hold back a tail that could be the token's start, split across reads.
        keep = next((k for k in range(min(len(self.token) - 1, len(self.buf)), 0, -1)
                     if self.buf.endswith(self.token[:k])), 0)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out


class BashKernel(Kernel):
    def __init__(self, cwd, workdir):
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [shutil.which("bash"), "--noprofile", "--norc", "--noediting", "+H", "+m", "-i"],
            cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        # Keep the pipes on fds 60/61, so that each run gets them back after an `exec >file`.
        self._send("exec 60>&1 61>&2; set +o history; unset HISTFILE MAILCHECK PROMPT_COMMAND; "
                   "PS1= PS2= PS0=\n")
        if self._finish(None, self._sentinel(), 30) != "ok":
            self.close()
            raise ApiError(503, "unavailable", "bash did not start")

    def _send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def _sentinel(self, then=""):
        """Sends the line that ends a run: `then`, and the token on both streams."""
        secret = secrets.token_hex(16)
        # The token is printed in two halves, so that the line itself (echoed by
        # `set -x` or `set -v`) never holds it whole.
        self._send("__spinup_rc=$?; %sexec 1>&60 2>&61; printf '%%s%%s%%d\\n' __spinup_ %s__ \"$__spinup_rc\"; "
                   "printf '%%s%%s\\n' __spinup_ %s__ >&2; unset __spinup_rc\n" % (then, secret, secret))
        return ("__spinup_%s__" % secret).encode()

    def interrupt(self):
        os.killpg(self.proc.pid, signal.SIGINT)

    def _file(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        return shlex.quote(path)

    def execute(self, run, code, env):
        # Everything long goes through files: the lines sent stay short, so
        # writing them never waits on a bash that is itself waiting on us.
        code_file, restore = self._file("code.sh", code), ""
        try:
            if env:
                names = " ".join(env)
                self._send("source %s\n" % self._file("env.sh", "__spinup_env=$(declare -p %s 2>/dev/null)\n"
                           "export %s\n" % (names, " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in env.items()))))
                restore = "source %s; " % self._file("unenv.sh", "unset %s\neval \"$__spinup_env\"\n"
                                                      "unset __spinup_env\n" % names)
            self._send("{ source %s; } </dev/null\n" % code_file)
            token = self._sentinel(restore)
        except OSError:
            return None, "died"
        verdict = self._finish(run, token, None)
        if verdict == "ok" and self.status not in ("", "0"):
            run.error("ExitStatus", "exit status %s" % self.status)
        return None, verdict

    def _finish(self, run, token, timeout):
        """Forwards output until both sentinels pass (run None: discards it)."""
        streams = {self.proc.stdout.fileno(): ["stdout", Sentinel(token)],
                   self.proc.stderr.fileno(): ["stderr", Sentinel(token)]}
        for entry in streams.values():
            entry.append(codecs.getincrementaldecoder("utf-8")("replace"))
        deadline, open_fds = timeout and time.monotonic() + timeout, set(streams)
        while any(s.status is None for _, s, _ in streams.values()):
            verdict = "died" if self.exit_status() is not None else None
            if run is not None:
                verdict = self.watch(run)
            elif deadline and time.monotonic() > deadline:
                verdict = "stuck"
            got = False
            for fd in select.select(list(open_fds), [], [], 0.2 if verdict == "died" else TICK)[0]:
                data = os.read(fd, 65536)
                if not data:
                    open_fds.discard(fd)
                got = got or bool(data)
                name, sentinel, decoder = streams[fd]
                data = sentinel.feed(data)
                text = decoder.decode(data) if run is None or not run.truncated else ""
                # An interrupted bash starts a new line on stderr: not the code's output.
                if run is not None and not (run.interrupted and name == "stderr" and text == "\n"):
                    run.stream(name, text)
            if verdict and not (verdict == "died" and got):
                return verdict
        self.status = streams[self.proc.stdout.fileno()][1].status
        return "interrupted" if run is not None and run.interrupted else "ok"

    def close(self):
        kill_group(self.proc)
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


KERNELS = {"python": PythonKernel, "javascript": NodeKernel, "bash": BashKernel}


# ---------------------------------------------------------------------------
# Contexts

class Context:
    def __init__(self, id, language, cwd):
        self.id, self.language, self.cwd = id, language, cwd
        self.lock = threading.Lock()   # one execution (or restart, or close) at a time
        self.kernel = None
        self.closing = None            # "deleted" or "restarted" while waiting for the lock
        self.deleted = False
        self.workdir = os.path.join(TMP, id)

    def describe(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    def ensure_kernel(self):
        """Starts the kernel when there is none or it died; call with the lock held."""
        if self.kernel is not None and self.kernel.exit_status() is not None:
            self.stop_kernel()
        if self.kernel is None:
            reason = unavailable_reason(self.language)
            if reason:
                raise ApiError(503, "unavailable", reason)
            os.makedirs(self.workdir, mode=0o700, exist_ok=True)
            try:
                self.kernel = KERNELS[self.language](self.cwd, self.workdir)
            except ApiError:
                raise
            except Exception as e:
                raise ApiError(503, "unavailable", "the %s kernel did not start: %s: %s"
                               % (self.language, type(e).__name__, e))

    def stop_kernel(self):
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            try:
                kernel.close()
            except Exception:
                pass

    def take(self, why):
        """Takes the lock, ending a running execution first."""
        self.closing = why
        self.lock.acquire()
        self.closing = None

    def execute(self, run, code, env):
        try:
            count, outcome = self.kernel.execute(run, code, env)
        except Exception as e:  # a bug here, or a kernel that broke its protocol
            self.stop_kernel()
            run.error("InternalError", "%s: %s; the kernel was stopped" % (type(e).__name__, e), force=True)
            return run.end(None)
        seconds = "%g" % (run.timeout_ms / 1000)
        if outcome == "died":
            status = self.kernel.exit_status()
            self.stop_kernel()
            run.error("KernelDied", "the %s kernel exited (%s) while running this code; its state is "
                      "lost and the next run starts a new kernel" % (self.language, describe_exit(status)),
                      force=True)
        elif outcome == "stuck":
            self.stop_kernel()
            try:
                self.ensure_kernel()
            except Exception:
                pass  # the next run tries again and reports why
            if run.timed_out:
                run.error("TimeoutError", "the code ran past its timeout of %s s and did not stop within "
                          "%g s of being interrupted, so the kernel was restarted; its state is lost"
                          % (seconds, GRACE), force=True)
        elif outcome == "interrupted" and run.timed_out:
            run.error("TimeoutError", "the code ran past its timeout of %s s and was interrupted; the "
                      "context keeps its state" % seconds, force=True)
        elif outcome == "aborted":
            run.error("ContextClosed", "the context was %s while this code ran" % self.closing, force=True)
        run.end(count)


class Registry:
    def __init__(self):
        self.contexts, self.lock = {}, threading.Lock()
        self.creating = {language: threading.Lock() for language in LANGUAGES}

    def get(self, id):
        with self.lock:
            context = self.contexts.get(id)
        if context is None:
            raise ApiError(404, "not_found", "no context with id %r" % id)
        return context

    def create(self, language, cwd, id=None):
        context = Context(id or "ctx-" + secrets.token_hex(6), language, cwd)
        with context.lock:
            context.ensure_kernel()
        with self.lock:
            self.contexts[context.id] = context
        return context

    def default(self, language):
        id = "default-" + language
        with self.creating[language]:
            with self.lock:
                context = self.contexts.get(id)
            return context or self.create(language, SERVER_CWD, id)

    def remove(self, id):
        with self.lock:
            context = self.contexts.pop(id, None)
        if context is None:
            raise ApiError(404, "not_found", "no context with id %r" % id)
        return context

    def close_all(self):
        with self.lock:
            contexts, self.contexts = list(self.contexts.values()), {}
        for context in contexts:
            context.stop_kernel()
            shutil.rmtree(context.workdir, ignore_errors=True)


REGISTRY = Registry()
SERVER_CWD = os.getcwd()


# ---------------------------------------------------------------------------
# HTTP

def field(body, name, kind, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid("%s must be %s" % (name, {str: "a string", int: "an integer", dict: "an object"}[kind]))
    return value


def check_language(language):
    if language not in LANGUAGES:
        raise invalid("unknown language %r; the languages are %s" % (language, ", ".join(LANGUAGES)))
    return language


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "spinup-interpreter/1"
    timeout = 120  # seconds a client may stay silent, or not read what we send

    def log_message(self, format, *args):
        pass

    def dispatch(self):
        method, self.streaming = self.command, False
        try:
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            routes = {("health",): {"GET": self.health},
                      ("contexts",): {"GET": self.list_contexts, "POST": self.create_context},
                      ("execute",): {"POST": self.execute}}
            if len(parts) == 2 and parts[0] == "contexts":
                routes[tuple(parts)] = {"GET": self.get_context, "DELETE": self.delete_context}
            if len(parts) == 3 and parts[0] == "contexts" and parts[2] == "restart":
                routes[tuple(parts)] = {"POST": self.restart_context}
            methods = routes.get(tuple(parts))
            if methods is None or method not in methods:
                self.close_connection = True  # the body, if any, stays unread
            if methods is None:
                raise ApiError(404, "not_found", "no such path: %s" % self.path)
            if method not in methods:
                self.extra_headers = {"Allow": ", ".join(methods)}
                raise ApiError(405, "method_not_allowed", "%s does not take %s" % (self.path, method))
            body = self.read_body()
            methods[method](*([parts[1]] if len(parts) > 1 else []), body)
        except ApiError as e:
            self.reply(e.status, {"code": e.code, "message": e.message})
        except Exception as e:
            self.reply(500, {"code": "internal", "message": "%s: %s" % (type(e).__name__, e)})

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = dispatch

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise invalid("send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise invalid("bad Content-Length")
        if length > MAX_BODY:
            self.close_connection = True
            while 0 < length <= 4 * MAX_BODY:  # read it, so that the client sees the answer
                chunk = self.rfile.read(min(length, 1 << 20))
                length = length - len(chunk) if chunk else 0
            raise ApiError(413, "too_large", "the request body is over 16 MiB")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise invalid("the body is not JSON: %s" % e)
        if not isinstance(body, dict):
            raise invalid("the body must be a JSON object")
        return body

    def reply(self, status, obj):
        if self.streaming:  # too late for a status; the stream just ends
            return
        data = b"" if status == 204 else json.dumps(obj).encode()
        self.send_response(status)
        for name, value in getattr(self, "extra_headers", {}).items():
            self.send_header(name, value)
        self.extra_headers = {}
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def health(self, body):
        self.reply(200, {"version": 1, "languages": {l: unavailable_reason(l) for l in LANGUAGES}})

    def list_contexts(self, body):
        with REGISTRY.lock:
            contexts = list(REGISTRY.contexts.values())
        self.reply(200, [c.describe() for c in contexts])

    def create_context(self, body):
        language = check_language(field(body, "language", str, "python"))
        cwd = field(body, "cwd", str, SERVER_CWD)
        if not os.path.isdir(cwd):
            raise invalid("cwd %r is not a directory" % cwd)
        self.reply(201, REGISTRY.create(language, os.path.abspath(cwd)).describe())

    def get_context(self, id, body):
        self.reply(200, REGISTRY.get(id).describe())

    def delete_context(self, id, body):
        context = REGISTRY.remove(id)
        context.take("deleted")
        context.deleted = True
        try:
            context.stop_kernel()
        finally:
            context.lock.release()
        shutil.rmtree(context.workdir, ignore_errors=True)
        self.reply(204, None)

    def restart_context(self, id, body):
        context = REGISTRY.get(id)
        context.take("restarted")
        try:
            context.stop_kernel()
            context.ensure_kernel()
        finally:
            context.lock.release()
        self.reply(200, context.describe())

    def execute(self, body):
        code = body.get("code")
        if not isinstance(code, str):
            raise invalid("code must be a string")
        language = field(body, "language", str)
        if language is not None:
            check_language(language)
        context_id = field(body, "context_id", str)
        env = field(body, "env_vars", dict, {})
        for k, v in env.items():
            if not isinstance(v, str) or not k or "=" in k or "\0" in k or "\0" in v:
                raise invalid("env_vars must map names (no '=') to strings")
        timeout_ms = field(body, "timeout_ms", int, DEFAULT_TIMEOUT_MS)
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            raise invalid("timeout_ms must be between 1 and %d" % MAX_TIMEOUT_MS)
        if context_id is not None:
            context = REGISTRY.get(context_id)
            if language is not None and language != context.language:
                raise invalid("context %s runs %s, not %s" % (context.id, context.language, language))
        else:
            context = REGISTRY.default(language or "python")
        if context.language == "bash" and not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) for k in env):
            raise invalid("bash env_vars names must be shell identifiers")
        with context.lock:
            if context.deleted:  # while this request waited for it
                raise ApiError(404, "not_found", "no context with id %r" % context.id)
            context.ensure_kernel()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.streaming, self.close_connection = True, True
            context.execute(Run(self, context, timeout_ms), code, env)


def make_tmp():
    os.makedirs(TMP, mode=0o700, exist_ok=True)
    st = os.lstat(TMP)
    if not os.path.isdir(TMP) or os.path.islink(TMP) or st.st_uid != os.getuid():
        sys.exit("spinup-interpreter: %s is not a directory of this user" % TMP)
    os.chmod(TMP, 0o700)
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(TMP, "jupyter")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's warning at import
    # Keep IPython's and matplotlib's files out of an unwritable home.
    if not os.access(os.path.expanduser("~"), os.W_OK):
        os.environ.setdefault("IPYTHONDIR", os.path.join(TMP, "ipython"))
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(TMP, "matplotlib"))


def main():
    parser = argparse.ArgumentParser(prog="spinup-interpreter")
    parser.add_argument("--port", type=int, default=49999)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args([a for a in sys.argv[1:] if a != "-c"])
    make_tmp()
    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as e:
        print("spinup-interpreter: cannot listen on %s:%d: %s" % (args.host, args.port, e.strerror),
              file=sys.stderr)
        sys.exit(3)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("spinup-interpreter: listening on %s:%d" % (args.host, args.port), file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        REGISTRY.close_all()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
