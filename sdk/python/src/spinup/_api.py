"""What the sync and async clients share: request bodies, the protocol
frames of the WebSockets, NDJSON events, and output collection."""

from __future__ import annotations

import base64
import codecs
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union
from urllib.parse import quote

from .errors import SpinupError, error_from
from .models import (
    CodeError,
    CodeResult,
    ExecResult,
    Execution,
    ExitStatus,
    NetworkPolicy,
    Resources,
    SecretMount,
    from_dict,
    to_dict,
)

Command = Union[str, Sequence[str]]
#: An output callback: called with each chunk of text as it arrives.
OutputCallback = Callable[[str], Any]

# Frame kinds: `[kind u8][len u32 big-endian][payload]`, one per WebSocket
# binary message (crates/protocol/src/frame.rs).
START, STDIN, STDIN_CLOSE, SIGNAL, RESIZE = 0x01, 0x02, 0x03, 0x04, 0x05
STARTED, STDOUT, STDERR, EXIT, ERROR = 0x10, 0x11, 0x12, 0x13, 0x14
_HEADER = struct.Struct(">BI")

SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10, "SIGUSR2": 12, "SIGTERM": 15}


def seg(s: str) -> str:
    """A path segment, escaped."""
    return quote(str(s), safe="")


def sb_path(sandbox_id: str, rest: str = "") -> str:
    return f"/v1/sandboxes/{seg(sandbox_id)}{rest}"


def signal_number(sig: int | str) -> int:
    if isinstance(sig, int):
        return sig
    name = sig.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {sig!r}; give a number")
    return SIGNALS[name]


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: int, v: Any) -> bytes:
    return encode_frame(kind, json.dumps(v).encode())


def decode_frame(msg: bytes | str) -> tuple[int, bytes]:
    if isinstance(msg, str):
        raise SpinupError("unexpected text message on the exec WebSocket", code="protocol")
    if len(msg) < _HEADER.size:
        raise SpinupError("truncated frame", code="protocol")
    kind, n = _HEADER.unpack_from(msg)
    payload = bytes(msg[_HEADER.size :])
    if len(payload) != n:
        raise SpinupError("truncated frame", code="protocol")
    return kind, payload


def exec_body(
    cmd: Command,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | int | None = None,
    timeout_ms: int | None = None,
    background: bool = False,
    input: str | bytes | None = None,
    pty: tuple[int, int] | None = None,
    stdin: bool = False,
) -> dict[str, Any]:
    """The ExecRequest: a string runs through ``/bin/sh -c``, a list directly."""
    body: dict[str, Any] = {}
    if isinstance(cmd, str):
        body["cmd"] = cmd
    else:
        argv = [str(a) for a in cmd]
        if not argv:
            raise ValueError("an empty argv")
        body["argv"] = argv
    if env:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if user is not None:
        body["user"] = str(user)
    if timeout_ms is not None:
        body["timeout_ms"] = int(timeout_ms)
    if background:
        body["background"] = True
    if input is not None:
        body["input"] = input.decode() if isinstance(input, bytes) else input
    if pty is not None:
        body["pty"] = {"cols": pty[0], "rows": pty[1]}
    if stdin:
        body["stdin"] = True
    return body


def create_body(
    env: str | None,
    *,
    driver: str | None,
    timeout_s: int | None,
    resources: Resources | Mapping[str, Any] | None,
    labels: Mapping[str, str] | None,
    network: NetworkPolicy | Mapping[str, Any] | str | None,
    secrets: Sequence[SecretMount | str | Mapping[str, Any]] | None,
    from_snapshot: str | None,
    on_timeout: str | None,
    auto_resume: bool | None,
    env_vars: Mapping[str, str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if env is not None:
        body["env"] = env
    if driver is not None:
        body["driver"] = driver
    if timeout_s is not None:
        body["timeout_s"] = int(timeout_s)
    if resources is not None:
        body["resources"] = to_dict(resources) if isinstance(resources, Resources) else dict(resources)
    if labels:
        body["labels"] = dict(labels)
    if network is not None:
        body["network"] = network_body(network)
    if secrets:
        body["secrets"] = [secret_mount(s) for s in secrets]
    if from_snapshot is not None:
        body["from_snapshot"] = from_snapshot
    if on_timeout is not None:
        body["on_timeout"] = on_timeout
    if auto_resume is not None:
        body["auto_resume"] = auto_resume
    if env_vars:
        body["env_vars"] = dict(env_vars)
    return body


def network_body(p: NetworkPolicy | Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(p, str):
        return {"mode": p}
    if isinstance(p, NetworkPolicy):
        d: dict[str, Any] = to_dict(p)
        return d
    return dict(p)


def secret_mount(s: SecretMount | str | Mapping[str, Any], mode: str | None = None, hosts: Sequence[str] | None = None) -> dict[str, Any]:
    if isinstance(s, str):
        s = SecretMount(name=s, mode=mode, hosts=list(hosts) if hosts is not None else None)
    return to_dict(s) if isinstance(s, SecretMount) else dict(s)


def file_params(path: str, **kw: Any) -> dict[str, str]:
    p = {"path": path}
    for k, v in kw.items():
        if v is None:
            continue
        p[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return p


@dataclass
class Event:
    """One event of a running process (``spinup.ProcessEvent``): ``kind``
    ``started`` (with ``pid``), ``stdout``/``stderr`` (``data``), ``exit``
    (``exit``) or ``error`` (``error``)."""

    kind: str  # started | stdout | stderr | exit | error
    pid: int | None = None
    data: bytes = b""
    exit: ExitStatus | None = None
    error: SpinupError | None = None


def ndjson_event(line: bytes | str) -> Event | None:
    if not line or not line.strip():
        return None
    v = json.loads(line)
    t = v.get("type")
    if t == "started":
        return Event("started", pid=v.get("pid"))
    if t in ("stdout", "stderr"):
        data = base64.b64decode(v["data_b64"]) if "data_b64" in v else v.get("data", "").encode()
        return Event(t, data=data)
    if t == "exit":
        return Event("exit", exit=ExitStatus(v.get("exit_code", 0), v.get("signal"), bool(v.get("timed_out")), v.get("message")))
    if t == "error":
        return Event("error", error=SpinupError(v.get("message", ""), code=v.get("code", "error")))
    return None


def frame_event(msg: bytes | str) -> Event | None:
    kind, payload = decode_frame(msg)
    if kind == STARTED:
        return Event("started", pid=json.loads(payload)["pid"])
    if kind == STDOUT:
        return Event("stdout", data=payload)
    if kind == STDERR:
        return Event("stderr", data=payload)
    if kind == EXIT:
        v = json.loads(payload)
        return Event("exit", exit=ExitStatus(v.get("exit_code", 0), v.get("signal"), bool(v.get("timed_out")), v.get("message")))
    if kind == ERROR:
        v = json.loads(payload)
        return Event("error", error=error_for_code(v.get("code", "error"), v.get("message", "")))
    return None


def error_for_code(code: str, message: str) -> SpinupError:
    """An error carried in a stream (no HTTP status): by its code."""
    status = {
        "invalid_argument": 400,
        "not_found": 404,
        "conflict": 409,
        "unsupported": 501,
        "unavailable": 503,
        "agent_error": 502,
        "internal": 500,
    }.get(code)
    if status is None:
        return SpinupError(message, code=code)
    e = error_from(status, json.dumps({"code": code, "message": message}).encode())
    e.status = None
    return e


class Collector:
    """Accumulates a process's output into an :class:`ExecResult`, calling
    the callbacks with text as it comes (split multi-byte characters are
    held until whole)."""

    def __init__(self, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> None:
        self.on = {"stdout": on_stdout, "stderr": on_stderr}
        self.dec = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("stdout", "stderr")}
        self.buf: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.pid: int | None = None
        self.result: ExecResult | None = None

    def feed(self, ev: Event) -> Any:
        """Returns what the callback returned (an awaitable for async ones)."""
        if ev.kind == "started":
            self.pid = ev.pid
        elif ev.kind in ("stdout", "stderr"):
            text = self.dec[ev.kind].decode(ev.data)
            self.buf[ev.kind].append(text)
            cb = self.on[ev.kind]
            if cb is not None and text:
                return cb(text)
        elif ev.kind == "exit":
            assert ev.exit is not None
            for k in ("stdout", "stderr"):
                self.buf[k].append(self.dec[k].decode(b"", final=True))
            x = ev.exit
            self.result = ExecResult(
                stdout="".join(self.buf["stdout"]),
                stderr="".join(self.buf["stderr"]),
                exit_code=x.exit_code,
                signal=x.signal,
                timed_out=x.timed_out,
                message=x.message,
                pid=self.pid,
            )
        elif ev.kind == "error":
            assert ev.error is not None
            raise ev.error
        return None

    def finish(self) -> ExecResult:
        if self.result is None:
            raise SpinupError("the process stream ended without an exit status (sandbox stopped?)", code="agent_error")
        return self.result


def check_ok(status: int, body: bytes) -> None:
    if not 200 <= status < 300:
        raise error_from(status, body)


def build_line(line: bytes | str) -> tuple[str, Any] | None:
    """One NDJSON line of an environment build: ('progress', text),
    ('environment', dict) or ('error', SpinupError)."""
    if not line or not line.strip():
        return None
    v = json.loads(line)
    if "progress" in v:
        return "progress", v["progress"]
    if "environment" in v:
        return "environment", v["environment"]
    if "error" in v:
        e = v["error"] or {}
        return "error", error_for_code(e.get("code", "error"), e.get("message", "build failed"))
    return None


CHUNK = 1 << 20


CodeCallback = Callable[[Any], Any]


class CodeCollector:
    """Accumulates a run of code's NDJSON events into an
    :class:`~spinup.models.Execution`, calling the callbacks as they come:
    text for stdout and stderr, a :class:`~spinup.models.CodeResult` for a
    result, a :class:`~spinup.models.CodeError` for an error."""

    def __init__(
        self,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: CodeCallback | None = None,
        on_error: CodeCallback | None = None,
    ) -> None:
        self.on_stdout, self.on_stderr, self.on_result, self.on_error = on_stdout, on_stderr, on_result, on_error
        self.out: list[str] = []
        self.err: list[str] = []
        self.execution = Execution()
        self.ended = False

    def feed(self, line: bytes | str) -> Any:
        """Returns what the callback returned (an awaitable for async ones)."""
        if not line or not line.strip():
            return None
        v = json.loads(line)
        kind = v.get("type")
        if kind == "stdout":
            self.out.append(v.get("text", ""))
            return self.on_stdout(v.get("text", "")) if self.on_stdout else None
        if kind == "stderr":
            self.err.append(v.get("text", ""))
            return self.on_stderr(v.get("text", "")) if self.on_stderr else None
        if kind == "result":
            r = from_dict(CodeResult, v)
            self.execution.results.append(r)
            return self.on_result(r) if self.on_result else None
        if kind == "error":
            e = from_dict(CodeError, v)
            self.execution.error = e
            return self.on_error(e) if self.on_error else None
        if kind == "end":
            self.ended = True
            self.execution.execution_count = v.get("execution_count")
            self.execution.timed_out = bool(v.get("timed_out"))
            self.execution.truncated = bool(v.get("truncated"))
        return None

    def finish(self) -> Execution:
        if not self.ended:
            raise SpinupError("the run's stream ended without its end (sandbox stopped?)", code="agent_error")
        self.execution.stdout = "".join(self.out)
        self.execution.stderr = "".join(self.err)
        return self.execution


def code_body(
    code: str,
    *,
    language: str | None,
    context: Any,
    env: Mapping[str, str] | None,
    timeout_s: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code}
    if language is not None:
        body["language"] = language
    if context is not None:
        body["context"] = context if isinstance(context, str) else context.id
    if env:
        body["env"] = dict(env)
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    return body


def context_id(context: Any) -> str:
    return context if isinstance(context, str) else str(context.id)
