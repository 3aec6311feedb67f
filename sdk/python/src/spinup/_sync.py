"""The synchronous client: :class:`Spinup` and the handles it returns."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, Union, overload

import httpx

from . import _api
from ._api import CHUNK, CodeCallback, Command, OutputCallback, sb_path, seg
from ._config import Target, resolve
from ._ws import ConnectionClosed, SyncWebSocket
from .errors import ConnectionError, ExecError, NotFound, SpinupError, error_from
from .models import (
    AgentInfo,
    CodeContext,
    Execution,
    Diff,
    DriverCapabilities,
    Environment,
    ExecResult,
    ExitStatus,
    ExposedPort,
    FileInfo,
    GcReport,
    NetworkPolicy,
    PortExposure,
    ProcessInfo,
    Resources,
    SandboxDetails,
    SecretInfo,
    SecretMount,
    Snapshot,
    Transition,
    WatchEvent,
    from_dict,
    to_dict,
)

__all__ = [
    "Spinup",
    "Sandbox",
    "Process",
    "Attachment",
    "Pty",
    "Watcher",
    "ForkResult",
    "Sandboxes",
    "Snapshots",
    "Secrets",
    "Environments",
    "Files",
    "Processes",
    "Ports",
    "SandboxSecrets",
]

#: What a write accepts: bytes, text, a binary file object, or an iterable of chunks.
WriteData = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes]]


def _chunks(data: WriteData) -> bytes | Iterator[bytes]:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        f: Any = data

        def gen() -> Iterator[bytes]:
            while True:
                b = f.read(CHUNK)
                if not b:
                    return
                yield b.encode() if isinstance(b, str) else b

        return gen()
    return (bytes(c) for c in data)


class _Transport:
    def __init__(self, target: Target, timeout: float | None) -> None:
        self.target = target
        transport = httpx.HTTPTransport(uds=target.uds) if target.uds else None
        self.http = httpx.Client(
            base_url=target.base_url,
            headers=target.headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=30.0),
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as e:
            raise ConnectionError(f"request to the spinup daemon at {self.target.describe()} timed out: {e}", code="timeout") from e
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach the spinup daemon at {self.target.describe()}: {e}", code="connection_error") from e

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        with self._errors():
            r = self.http.request(method, path, params=params, json=json, content=content, headers=headers, timeout=timeout)
        if r.is_error:
            raise error_from(r.status_code, r.content)
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        r = self.request(method, path, **kw)
        return r.json() if r.content else None

    @contextlib.contextmanager
    def stream(self, method: str, path: str, *, timeout: Any = None, **kw: Any) -> Iterator[httpx.Response]:
        """A streamed answer (no read timeout unless given); an error
        answer is read whole and raised."""
        with self._errors():
            with self.http.stream(method, path, timeout=httpx.Timeout(timeout, connect=30.0), **kw) as r:
                if r.is_error:
                    r.read()
                    raise error_from(r.status_code, r.content)
                yield r

    def websocket(self, path: str) -> SyncWebSocket:
        return SyncWebSocket(self.target, path)


class Spinup:
    """A client of one Spinup daemon.

    ``host`` is a unix socket path (default ``$SPINUP_HOST``, else
    ``/run/spinup/spinup.sock``) or ``http://HOST:PORT``; ``api_key``
    (default ``$SPINUP_API_KEY``) is required by TCP listeners. ``timeout``
    bounds each plain request in seconds (commands and streams are bounded
    by their own arguments instead).

    >>> with Spinup() as client:
    ...     with client.sandboxes.create(env="debian") as sbx:
    ...         print(sbx.exec("uname -a").stdout)
    """

    def __init__(self, host: str | None = None, api_key: str | None = None, *, timeout: float | None = 300.0) -> None:
        self._t = _Transport(resolve(host, api_key), timeout)
        self.sandboxes = Sandboxes(self)
        self.snapshots = Snapshots(self)
        self.secrets = Secrets(self)
        self.environments = Environments(self)

    @property
    def host(self) -> str:
        return self._t.target.describe()

    def drivers(self) -> list[DriverCapabilities]:
        """The drivers and their probed capabilities."""
        return [from_dict(DriverCapabilities, d) for d in self._t.json("GET", "/v1/drivers")]

    def driver(self, name: str) -> DriverCapabilities:
        for d in self.drivers():
            if d.driver == name:
                return d
        raise NotFound(f"driver '{name}' not found", code="not_found")

    def gc(self) -> GcReport:
        """Remove what a killed daemon of this data dir left behind."""
        return from_dict(GcReport, self._t.json("POST", "/v1/gc"))

    def openapi(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._t.json("GET", "/v1/openapi.json")
        return doc

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Spinup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spinup(host={self.host!r})"


# --- sandboxes ---------------------------------------------------------------


class Sandboxes:
    """``client.sandboxes``: create, list, get and remove sandboxes."""

    def __init__(self, client: Spinup) -> None:
        self._c = client

    def create(
        self,
        env: str | None = None,
        *,
        driver: str | None = None,
        timeout_s: int | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        network: NetworkPolicy | Mapping[str, Any] | str | None = None,
        secrets: Sequence[SecretMount | str | Mapping[str, Any]] | None = None,
        from_snapshot: str | None = None,
        on_timeout: str | None = None,
        auto_resume: bool | None = None,
        env_vars: Mapping[str, str] | None = None,
    ) -> Sandbox:
        """Create and start a sandbox; use it as a context manager to have
        it removed (forcibly) at the end of the block.

        ``env`` names an environment (default: the daemon's); or start from
        a snapshot with ``from_snapshot``. ``network`` is a
        :class:`NetworkPolicy`, a dict, or just a mode (``"none"``,
        ``"allow"``, ``"open"``). ``secrets`` are names (mounted as files)
        or :class:`SecretMount`.
        """
        body = _api.create_body(
            env,
            driver=driver,
            timeout_s=timeout_s,
            resources=resources,
            labels=labels,
            network=network,
            secrets=secrets,
            from_snapshot=from_snapshot,
            on_timeout=on_timeout,
            auto_resume=auto_resume,
            env_vars=env_vars,
        )
        return Sandbox(self._c, from_dict(SandboxDetails, self._c._t.json("POST", "/v1/sandboxes", json=body)))

    def list(self, labels: Mapping[str, str] | None = None) -> list[Sandbox]:
        """Every sandbox, or those with all of ``labels``."""
        params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        return [Sandbox(self._c, from_dict(SandboxDetails, d)) for d in self._c._t.json("GET", "/v1/sandboxes", params=params)]

    def get(self, sandbox_id: str) -> Sandbox:
        return Sandbox(self._c, from_dict(SandboxDetails, self._c._t.json("GET", sb_path(sandbox_id))))

    def remove(self, sandbox_id: str, *, force: bool = False) -> None:
        """Destroy a sandbox; a running or paused one needs ``force``."""
        self._c._t.request("DELETE", sb_path(sandbox_id), params={"force": "true"} if force else None)


class Sandbox:
    """A handle on one sandbox. ``details`` is the daemon's description as
    last fetched (``refresh()`` fetches it again); the sub-APIs are
    ``files``, ``processes``, ``ports`` and ``secrets``."""

    def __init__(self, client: Spinup, details: SandboxDetails) -> None:
        self._c = client
        self._t = client._t
        self.details = details
        self.files = Files(self)
        self.processes = Processes(self)
        self.ports = Ports(self)
        self.secrets = SandboxSecrets(self)

    @property
    def id(self) -> str:
        return self.details.id

    @property
    def state(self) -> str:
        return self.details.state

    @property
    def driver(self) -> str:
        return self.details.driver

    @property
    def env(self) -> str:
        return self.details.env

    @property
    def labels(self) -> dict[str, str]:
        return self.details.labels

    def _path(self, rest: str = "") -> str:
        return sb_path(self.id, rest)

    def _update(self, d: Any) -> Sandbox:
        self.details = from_dict(SandboxDetails, d)
        return self

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, env={self.env!r}, driver={self.driver!r}, state={self.state!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(NotFound):
            self.remove(force=True)

    # lifecycle

    def refresh(self) -> Sandbox:
        return self._update(self._t.json("GET", self._path()))

    def remove(self, *, force: bool = False) -> None:
        self._c.sandboxes.remove(self.id, force=force)

    def kill(self) -> None:
        """Remove it whatever its state (``remove(force=True)``)."""
        self.remove(force=True)

    def set_timeout(self, timeout_s: int) -> Sandbox:
        """Destroy (or pause, per ``on_timeout``) it ``timeout_s`` seconds from now; 0 clears the timeout."""
        return self._update(self._t.json("PUT", self._path("/timeout"), json={"timeout_s": int(timeout_s)}))

    def pause(self, *, free_memory: bool = False) -> Sandbox:
        return self._update(self._t.json("POST", self._path("/pause"), json={"free_memory": free_memory}))

    def resume(self) -> Sandbox:
        return self._update(self._t.json("POST", self._path("/resume")))

    def info(self) -> AgentInfo:
        """The agent's version, uptime and resource usage."""
        return from_dict(AgentInfo, self._t.json("GET", self._path("/info")))

    def events(self) -> list[Transition]:
        """Its recorded lifecycle transitions, oldest first."""
        return [from_dict(Transition, d) for d in self._t.json("GET", self._path("/events"))]

    def update_resources(self, resources: Resources | Mapping[str, Any]) -> Sandbox:
        """Change resources live (capability ``live_resource_update``; no
        driver has it yet, so this raises :class:`~spinup.errors.Unsupported`)."""
        body = to_dict(resources) if isinstance(resources, Resources) else dict(resources)
        return self._update(self._t.json("PATCH", self._path("/resources"), json=body))

    def set_network(
        self,
        policy: NetworkPolicy | Mapping[str, Any] | str | None = None,
        *,
        allow: Sequence[str] | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> NetworkPolicy:
        """Replace the network policy (applies at once): a policy, a dict,
        or a mode with ``allow`` (CIDRs and domains) and ``hosts``."""
        if policy is None or isinstance(policy, str):
            policy = NetworkPolicy(mode=policy or ("allow" if allow else "none"), allow=list(allow or []), hosts=dict(hosts or {}))
        self._update(self._t.json("PUT", self._path("/network"), json=_api.network_body(policy)))
        return self.details.network

    # commands

    @overload
    def exec(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | int | None = ...,
        timeout_ms: int | None = ...,
        input: str | bytes | None = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
        check: bool = ...,
        background: Literal[False] = ...,
    ) -> ExecResult: ...

    @overload
    def exec(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | int | None = ...,
        timeout_ms: int | None = ...,
        input: str | bytes | None = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
        check: bool = ...,
        background: Literal[True],
    ) -> Process: ...

    def exec(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | int | None = None,
        timeout_ms: int | None = None,
        input: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
        background: bool = False,
    ) -> ExecResult | Process:
        """Run a command to its end: a string runs through ``/bin/sh -c``,
        a list directly. ``input`` is fed to stdin, which is then closed.
        With ``on_stdout``/``on_stderr`` the output is streamed to them as
        it comes. ``check=True`` raises :class:`~spinup.errors.ExecError`
        on a non-zero exit. ``background=True`` returns a :class:`Process`
        as soon as it started (see :meth:`start`)."""
        if background:
            return self.start(cmd, env=env, cwd=cwd, user=user, timeout_ms=timeout_ms)
        body = _api.exec_body(cmd, env=env, cwd=cwd, user=user, timeout_ms=timeout_ms, input=input)
        if on_stdout is None and on_stderr is None:
            r = self._t.json("POST", self._path("/exec"), json=body, timeout=None)
            result = from_dict(ExecResult, r)
        else:
            col = _api.Collector(on_stdout, on_stderr)
            with self._t.stream("POST", self._path("/exec"), params={"stream": "true"}, json=body) as resp:
                for line in resp.iter_lines():
                    ev = _api.ndjson_event(line)
                    if ev is not None:
                        col.feed(ev)
                        if ev.kind == "exit":
                            break
            result = col.finish()
        if check and not result.ok:
            raise ExecError(result, cmd)
        return result

    def start(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | int | None = None,
        timeout_ms: int | None = None,
        stdin: bool = False,
    ) -> Process:
        """Start a background process and return its handle once it runs;
        it outlives this client. With ``stdin=True`` its stdin stays open
        for :meth:`Process.send_stdin` (until :meth:`Process.close_stdin`)."""
        body = _api.exec_body(cmd, env=env, cwd=cwd, user=user, timeout_ms=timeout_ms, background=True, stdin=stdin)
        if stdin:
            # Only the WebSocket keeps a process's stdin open.
            ws = self._t.websocket(self._path("/exec/ws"))
            try:
                ws.send(_api.json_frame(_api.START, body))
                while True:
                    ev = _api.frame_event(ws.recv(timeout=60))
                    if ev is not None and ev.kind == "error":
                        raise ev.error  # type: ignore[misc]
                    if ev is not None and ev.kind == "started":
                        return Process(self, int(ev.pid))  # type: ignore[arg-type]
            finally:
                ws.close()
        with self._t.stream("POST", self._path("/exec"), params={"stream": "true"}, json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                ev = _api.ndjson_event(line)
                if ev is not None and ev.kind == "error":
                    raise ev.error  # type: ignore[misc]
                if ev is not None and ev.kind == "started":
                    return Process(self, int(ev.pid))  # type: ignore[arg-type]
        raise SpinupError("the exec stream ended before the process started", code="agent_error")

    def pty(
        self,
        cmd: Command | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | int | None = None,
        timeout_ms: int | None = None,
    ) -> Pty:
        """An interactive terminal (default command ``/bin/sh``) over a
        WebSocket; use it as a context manager."""
        body = _api.exec_body(
            cmd if cmd is not None else ["/bin/sh"], env=env, cwd=cwd, user=user, timeout_ms=timeout_ms, pty=(cols, rows), stdin=True
        )
        ws = self._t.websocket(self._path("/exec/ws"))
        ws.send(_api.json_frame(_api.START, body))
        p = Pty(ws)
        p._wait_started()
        return p

    # --- Code interpreter: kernels that live in the sandbox ----------------

    def run_code(
        self,
        code: str,
        *,
        language: str | None = None,
        context: str | CodeContext | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: CodeCallback | None = None,
        on_error: CodeCallback | None = None,
    ) -> Execution:
        """Run code in a persistent kernel in the sandbox, like a notebook
        cell: variables and imports stay for the next run of the same
        context (default: the language's own). ``language`` is ``python``
        (an IPython kernel), ``javascript`` (node) or ``bash``. The
        callbacks get output as it comes. ``timeout_s`` (default 300)
        interrupts the kernel, not the sandbox: the answer's ``error`` is
        then a ``TimeoutError`` and the context keeps its state. The
        sandbox needs python3 with Jupyter (the ``code-interpreter``
        environment)."""
        body = _api.code_body(code, language=language, context=context, env=env, timeout_s=timeout_s)
        col = _api.CodeCollector(on_stdout, on_stderr, on_result, on_error)
        with self._t.stream("POST", self._path("/code"), json=body) as resp:
            for line in resp.iter_lines():
                col.feed(line)
        return col.finish()

    def code_contexts(self) -> list[CodeContext]:
        return [from_dict(CodeContext, c) for c in self._t.json("GET", self._path("/code/contexts"))]

    def create_code_context(self, language: str = "python", *, cwd: str | None = None) -> CodeContext:
        """A context of its own: a new kernel, with its own state."""
        body: dict[str, Any] = {"language": language}
        if cwd is not None:
            body["cwd"] = cwd
        return from_dict(CodeContext, self._t.json("POST", self._path("/code/contexts"), json=body, timeout=None))

    def restart_code_context(self, context: str | CodeContext) -> CodeContext:
        """A new kernel for the context; its state is lost."""
        path = self._path(f"/code/contexts/{seg(_api.context_id(context))}/restart")
        return from_dict(CodeContext, self._t.json("POST", path, timeout=None))

    def remove_code_context(self, context: str | CodeContext) -> None:
        self._t.request("DELETE", self._path(f"/code/contexts/{seg(_api.context_id(context))}"))


    # snapshots

    def snapshot(self, name: str | None = None, *, labels: Mapping[str, str] | None = None, memory: bool = False) -> Snapshot:
        """Snapshot its filesystem (and memory, with ``memory=True`` on drivers that can)."""
        body: dict[str, Any] = {"memory": memory}
        if name is not None:
            body["name"] = name
        if labels:
            body["labels"] = dict(labels)
        return from_dict(Snapshot, self._t.json("POST", self._path("/snapshot"), json=body))

    def fork(self, count: int = 1, *, driver: str | None = None) -> ForkResult:
        """Children that start from its current state (an ephemeral snapshot)."""
        body: dict[str, Any] = {"count": count}
        if driver is not None:
            body["driver"] = driver
        r = self._t.json("POST", self._path("/fork"), json=body)
        return ForkResult(
            snapshot=from_dict(Snapshot, r["snapshot"]),
            children=[Sandbox(self._c, from_dict(SandboxDetails, d)) for d in r["children"]],
        )

    def diff(self, since: str | None = None, *, path: str | None = None, content: bool = False) -> Diff:
        """Filesystem changes since its creation or a snapshot of it; with
        ``path`` and ``content`` also that file's bytes before and after."""
        params = {k: v for k, v in {"since": since, "path": path}.items() if v is not None}
        if content:
            params["content"] = "true"
        return from_dict(Diff, self._t.json("GET", self._path("/diff"), params=params))


@dataclass
class ForkResult:
    snapshot: Snapshot
    children: list[Sandbox]


# --- processes ---------------------------------------------------------------


class Processes:
    """``sbx.processes``: processes started through the agent."""

    def __init__(self, sbx: Sandbox) -> None:
        self._s = sbx

    def list(self) -> list[ProcessInfo]:
        return [from_dict(ProcessInfo, d) for d in self._s._t.json("GET", self._s._path("/processes"))]

    def get(self, pid: int) -> Process:
        """A handle on a process (running or recently exited)."""
        for p in self.list():
            if p.pid == pid:
                return Process(self._s, pid)
        raise NotFound(f"process '{pid}' not found", code="not_found")

    def signal(self, pid: int, signal: int | str = 15) -> None:
        self._s._t.request("POST", self._s._path(f"/processes/{int(pid)}/signal"), json={"signal": _api.signal_number(signal)})

    def send_stdin(self, pid: int, data: bytes | str) -> None:
        self._s._t.request("POST", self._s._path(f"/processes/{int(pid)}/stdin"), content=_chunks(data))

    def close_stdin(self, pid: int) -> None:
        self._s._t.request("POST", self._s._path(f"/processes/{int(pid)}/stdin"), params={"close": "true"}, content=b"")


class Process:
    """A process in a sandbox, by pid: wait for it (re-attaching to its
    output, buffered output replayed), feed its stdin, signal it."""

    def __init__(self, sbx: Sandbox, pid: int) -> None:
        self.sandbox = sbx
        self.pid = pid

    def __repr__(self) -> str:
        return f"Process(sandbox={self.sandbox.id!r}, pid={self.pid})"

    def info(self) -> ProcessInfo:
        for p in self.sandbox.processes.list():
            if p.pid == self.pid:
                return p
        raise NotFound(f"process '{self.pid}' not found", code="not_found")

    def is_running(self) -> bool:
        return self.info().running

    def send_stdin(self, data: bytes | str) -> None:
        self.sandbox.processes.send_stdin(self.pid, data)

    def close_stdin(self) -> None:
        self.sandbox.processes.close_stdin(self.pid)

    def signal(self, signal: int | str = 15) -> None:
        self.sandbox.processes.signal(self.pid, signal)

    def kill(self) -> None:
        self.signal(9)

    def attach(self) -> Attachment:
        """Attach to its output now (what it printed so far is replayed
        first); use it as a context manager. Leaving a background process
        attached-to does not stop it."""
        return Attachment(self)

    def wait(
        self, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None, timeout: float | None = None
    ) -> ExecResult:
        """Attach and wait for it to end; the result has its output as the
        agent buffered it. ``timeout`` bounds the wait for each output."""
        with self.attach() as a:
            return a.wait(on_stdout=on_stdout, on_stderr=on_stderr, timeout=timeout)


class Attachment:
    """A live connection to a process's streams (``Process.attach()``):
    iterate its events, feed its stdin, signal it, wait for its end."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._ws = process.sandbox._t.websocket(process.sandbox._path(f"/processes/{process.pid}/ws"))
        self._ended = False

    def next_event(self, timeout: float | None = None) -> _api.Event | None:
        """The next event (``stdout``, ``stderr``, then ``exit``); ``None``
        once the stream ended. ``TimeoutError`` past ``timeout`` seconds."""
        while not self._ended:
            try:
                msg = self._ws.recv(timeout=timeout)
            except ConnectionClosed:
                self._ended = True
                return None
            ev = _api.frame_event(msg)
            if ev is None:
                continue
            if ev.kind in ("exit", "error"):
                self._ended = True
            return ev
        return None

    def __iter__(self) -> Iterator[_api.Event]:
        while True:
            ev = self.next_event()
            if ev is None:
                return
            yield ev

    def send_stdin(self, data: bytes | str) -> None:
        self._ws.send(_api.encode_frame(_api.STDIN, data.encode() if isinstance(data, str) else data))

    def close_stdin(self) -> None:
        self._ws.send(_api.encode_frame(_api.STDIN_CLOSE))

    def signal(self, signal: int | str = 15) -> None:
        self._ws.send(_api.json_frame(_api.SIGNAL, {"signal": _api.signal_number(signal)}))

    def wait(
        self, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None, timeout: float | None = None
    ) -> ExecResult:
        col = _api.Collector(on_stdout, on_stderr)
        col.pid = self.process.pid
        while True:
            try:
                ev = self.next_event(timeout)
            except TimeoutError:
                raise SpinupError(f"no output from process {self.process.pid} within {timeout}s", code="timeout") from None
            if ev is None:
                break
            col.feed(ev)
        if col.result is None:
            # The daemon closes a re-attach to a process that already
            # exited without replaying anything: take the status it lists.
            info = self.process.info()
            if not info.running and info.exit is not None:
                col.feed(_api.Event("exit", exit=info.exit))
        return col.finish()

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Pty:
    """An interactive terminal session. Read with :meth:`read` or
    :meth:`read_until`, type with :meth:`send`; :attr:`exit` is set once
    the process ended."""

    def __init__(self, ws: SyncWebSocket) -> None:
        self._ws = ws
        self.pid: int | None = None
        self.exit: ExitStatus | None = None

    def _wait_started(self) -> None:
        while self.pid is None:
            ev = _api.frame_event(self._ws.recv(timeout=60))
            if ev is None:
                continue
            if ev.kind == "error":
                self._ws.close()
                raise ev.error  # type: ignore[misc]
            if ev.kind == "started":
                self.pid = ev.pid

    def send(self, data: bytes | str) -> None:
        self._ws.send(_api.encode_frame(_api.STDIN, data.encode() if isinstance(data, str) else data))

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(_api.json_frame(_api.RESIZE, {"cols": cols, "rows": rows}))

    def signal(self, signal: int | str = 2) -> None:
        self._ws.send(_api.json_frame(_api.SIGNAL, {"signal": _api.signal_number(signal)}))

    def read(self, timeout: float | None = None) -> bytes:
        """The next output; ``b""`` once the process exited. Raises
        ``TimeoutError`` when nothing came within ``timeout`` seconds."""
        while self.exit is None:
            try:
                msg = self._ws.recv(timeout=timeout)
            except ConnectionClosed:
                break
            ev = _api.frame_event(msg)
            if ev is None:
                continue
            if ev.kind in ("stdout", "stderr"):
                return ev.data
            if ev.kind == "exit":
                self.exit = ev.exit
            if ev.kind == "error":
                raise ev.error  # type: ignore[misc]
        return b""

    def read_until(self, needle: str, timeout: float = 30.0) -> str:
        """Read until ``needle`` appears in the output; returns all that was read."""
        import time

        deadline = time.monotonic() + timeout
        out = b""
        want = needle.encode()
        while want not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{needle!r} not seen within {timeout}s; got {out[-500:]!r}")
            b = self.read(timeout=left)
            if not b and self.exit is not None:
                raise SpinupError(f"the pty process exited before {needle!r}; got {out[-500:]!r}", code="exited")
            out += b
        return out.decode("utf-8", "replace")

    def wait(self, timeout: float | None = None) -> ExitStatus:
        """Read (and drop) output until the process exits."""
        while self.exit is None:
            if not self.read(timeout=timeout) and self.exit is None:
                raise SpinupError("the pty stream ended without an exit status", code="agent_error")
        return self.exit

    def close(self) -> None:
        """Leave the session (the process, a foreground one, is killed)."""
        self._ws.close()

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- files -------------------------------------------------------------------


class Files:
    """``sbx.files``: the sandbox's filesystem. Paths are absolute."""

    def __init__(self, sbx: Sandbox) -> None:
        self._s = sbx

    def _p(self, rest: str = "") -> str:
        return self._s._path("/files" + rest)

    def read(self, path: str) -> bytes:
        return self._s._t.request("GET", self._p(), params={"path": path}, timeout=None).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def iter_read(self, path: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes, streamed in chunks."""
        with self._s._t.stream("GET", self._p(), params={"path": path}) as r:
            yield from r.iter_bytes(chunk_size)

    def download(self, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Stream a file to a local path or binary file object; returns its size."""
        n = 0
        with contextlib.ExitStack() as st:
            f: Any = st.enter_context(open(dest, "wb")) if isinstance(dest, (str, os.PathLike)) else dest
            for chunk in self.iter_read(path):
                f.write(chunk)
                n += len(chunk)
        return n

    def write(self, path: str, data: WriteData, *, mode: int | None = None, user: str | int | None = None) -> FileInfo:
        """Write a file (parents are created), streaming file objects and
        iterables of chunks. ``mode`` is a number (``0o644``); ``user`` owns
        the file and the directories created."""
        params = _api.file_params(path, mode=mode, user=user)
        return from_dict(FileInfo, self._s._t.json("PUT", self._p(), params=params, content=_chunks(data), timeout=None))

    def upload(self, local_path: str | os.PathLike[str], path: str, *, mode: int | None = None, user: str | int | None = None) -> FileInfo:
        with open(local_path, "rb") as f:
            return self.write(path, f, mode=mode, user=user)

    def stat(self, path: str) -> FileInfo:
        """A path's metadata (a final symlink is not followed)."""
        return from_dict(FileInfo, self._s._t.json("GET", self._p("/stat"), params={"path": path}))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFound:
            return False

    def list(self, path: str, *, depth: int = 1) -> list[FileInfo]:
        return [from_dict(FileInfo, d) for d in self._s._t.json("GET", self._p("/list"), params={"path": path, "depth": str(depth)})]

    def mkdir(self, path: str, *, mode: int | None = None, user: str | int | None = None) -> FileInfo:
        """Make a directory and its parents."""
        body: dict[str, Any] = {"path": path}
        if mode is not None:
            body["mode"] = mode
        if user is not None:
            body["user"] = str(user)
        return from_dict(FileInfo, self._s._t.json("POST", self._p("/mkdir"), json=body))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._s._t.request("POST", self._p("/remove"), json={"path": path, "recursive": recursive})

    def rename(self, src: str, dst: str) -> FileInfo:
        return from_dict(FileInfo, self._s._t.json("POST", self._p("/rename"), json={"from": src, "to": dst}))

    def chmod(self, path: str, mode: int) -> FileInfo:
        return from_dict(FileInfo, self._s._t.json("POST", self._p("/chmod"), json={"path": path, "mode": mode}))

    def watch(self, path: str, *, recursive: bool = False) -> Watcher:
        """Watch a directory: returns once the watches are in place;
        iterate for :class:`WatchEvent`; close it (or leave its ``with``)
        to stop."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        cm = self._s._t.stream("GET", self._p("/watch"), params=params)
        return Watcher(cm)


class Watcher:
    """Changes in a watched directory, as an iterator of :class:`WatchEvent`."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm
        resp: httpx.Response = cm.__enter__()
        self._lines = resp.iter_lines()
        try:
            first = self._next_event()
        except BaseException:
            self.close()
            raise
        if first is None or first.type != "started":
            self.close()
            raise SpinupError(f"the watch did not start: {first!r}", code="protocol")

    def _next_event(self) -> WatchEvent | None:
        for line in self._lines:
            if line.strip():
                return from_dict(WatchEvent, json.loads(line))
        return None

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        ev = self._next_event()
        if ev is None:
            raise StopIteration
        return ev

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- ports and secrets of a sandbox -------------------------------------------


class Ports:
    """``sbx.ports``: ports of the sandbox exposed on the host."""

    def __init__(self, sbx: Sandbox) -> None:
        self._s = sbx

    def list(self) -> list[PortExposure]:
        return [from_dict(PortExposure, d) for d in self._s._t.json("GET", self._s._path("/ports"))]

    def expose(self, port: int, *, public: bool = False, unix: bool = False, listen: str | None = None) -> ExposedPort:
        """Expose a port; unless ``public`` the answer's ``token`` (shown only now) is needed to reach it."""
        body: dict[str, Any] = {"port": port, "public": public, "unix": unix}
        if listen is not None:
            body["listen"] = listen
        return from_dict(ExposedPort, self._s._t.json("POST", self._s._path("/ports"), json=body))

    def unexpose(self, port: int) -> None:
        self._s._t.request("DELETE", self._s._path(f"/ports/{int(port)}"))


class SandboxSecrets:
    """``sbx.secrets``: attach secrets from the store, or detach them."""

    def __init__(self, sbx: Sandbox) -> None:
        self._s = sbx

    def attach(self, *secrets: SecretMount | str, mode: str | None = None, hosts: Sequence[str] | None = None) -> list[SecretMount]:
        """Attach (or change the mode of) secrets: names take ``mode``
        (``file`` by default, ``env`` or ``proxy``) and ``hosts``."""
        body = {"attach": [_api.secret_mount(s, mode, hosts) for s in secrets]}
        self._s._update(self._s._t.json("POST", self._s._path("/secrets"), json=body))
        return self._s.details.secrets

    def detach(self, *names: str) -> list[SecretMount]:
        self._s._update(self._s._t.json("POST", self._s._path("/secrets"), json={"detach": list(names)}))
        return self._s.details.secrets

    def list(self) -> list[SecretMount]:
        return self._s.refresh().details.secrets


# --- daemon-wide resources -----------------------------------------------------


class Snapshots:
    """``client.snapshots``."""

    def __init__(self, client: Spinup) -> None:
        self._t = client._t

    def list(self) -> list[Snapshot]:
        return [from_dict(Snapshot, d) for d in self._t.json("GET", "/v1/snapshots")]

    def get(self, snapshot: str) -> Snapshot:
        """By id or name."""
        return from_dict(Snapshot, self._t.json("GET", f"/v1/snapshots/{seg(snapshot)}"))

    def remove(self, snapshot: str) -> None:
        self._t.request("DELETE", f"/v1/snapshots/{seg(snapshot)}")

    def download_layer(self, snapshot: str, dest: str | os.PathLike[str] | IO[bytes]) -> str:
        """Stream the snapshot's own layer (an OCI layer tar) to a path or
        file object; its sha256 is checked against the daemon's digest,
        which is returned (``sha256:…``)."""
        h = hashlib.sha256()
        with contextlib.ExitStack() as st:
            f: Any = st.enter_context(open(dest, "wb")) if isinstance(dest, (str, os.PathLike)) else dest
            r = st.enter_context(self._t.stream("GET", f"/v1/snapshots/{seg(snapshot)}/layer"))
            digest = r.headers.get("x-spinup-digest", "")
            for chunk in r.iter_bytes(CHUNK):
                h.update(chunk)
                f.write(chunk)
        got = "sha256:" + h.hexdigest()
        if digest and got != digest:
            raise SpinupError(f"layer digest mismatch: got {got}, the daemon said {digest}", code="digest_mismatch")
        return got


class Secrets:
    """``client.secrets``: the daemon's secret store (values go in, never come out)."""

    def __init__(self, client: Spinup) -> None:
        self._t = client._t

    def set(self, name: str, value: str | bytes) -> SecretInfo:
        data = value.encode() if isinstance(value, str) else bytes(value)
        r = self._t.json("PUT", f"/v1/secrets/{seg(name)}", content=data, headers={"content-type": "application/octet-stream"})
        return from_dict(SecretInfo, r)

    def list(self) -> list[SecretInfo]:
        return [from_dict(SecretInfo, d) for d in self._t.json("GET", "/v1/secrets")]

    def get(self, name: str) -> SecretInfo:
        return from_dict(SecretInfo, self._t.json("GET", f"/v1/secrets/{seg(name)}"))

    def remove(self, name: str) -> None:
        """Remove a secret (:class:`~spinup.errors.Conflict` while attached)."""
        self._t.request("DELETE", f"/v1/secrets/{seg(name)}")


class Environments:
    """``client.environments``: root filesystems sandboxes are made from."""

    def __init__(self, client: Spinup) -> None:
        self._t = client._t

    def list(self) -> list[Environment]:
        return [from_dict(Environment, d) for d in self._t.json("GET", "/v1/environments")["environments"]]

    def recipes(self) -> builtins.list[str]:
        """The built-in recipes :meth:`build` knows."""
        return list(self._t.json("GET", "/v1/environments")["builtin"])

    def get(self, name: str) -> Environment:
        return from_dict(Environment, self._t.json("GET", f"/v1/environments/{seg(name)}"))

    def build(self, name: str, *, on_progress: OutputCallback | None = None) -> Environment:
        """Build a built-in recipe (``busybox``, ``debian``, ``base``),
        reporting progress lines to ``on_progress``."""
        with self._t.stream("POST", f"/v1/environments/{seg(name)}/build") as r:
            for line in r.iter_lines():
                item = _api.build_line(line)
                if item is None:
                    continue
                kind, v = item
                if kind == "progress" and on_progress is not None:
                    on_progress(v)
                elif kind == "environment":
                    return from_dict(Environment, v)
                elif kind == "error":
                    raise v
        raise SpinupError(f"the build of {name} ended without a result", code="agent_error")

    def import_tarball(self, name: str, data: str | os.PathLike[str] | WriteData) -> Environment:
        """Import a rootfs tarball (tar or tar.gz): a local path, bytes, a
        binary file object or an iterable of chunks, streamed."""
        with contextlib.ExitStack() as st:
            if isinstance(data, (str, os.PathLike)):
                data = st.enter_context(open(data, "rb"))
            r = self._t.json("POST", f"/v1/environments/{seg(name)}/import", content=_chunks(data), timeout=None)
        return from_dict(Environment, r)

    def remove(self, name: str) -> None:
        self._t.request("DELETE", f"/v1/environments/{seg(name)}")

