"""The asyncio client: :class:`AsyncSpinup` and the handles it returns.
The same API as :mod:`spinup` 's sync client, with ``await``; callbacks
may be plain functions or coroutines."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Callable, Literal, Union, overload

import httpx

from . import _api
from ._api import CHUNK, CodeCallback, Command, OutputCallback, sb_path, seg
from ._config import Target, resolve
from ._ws import ConnectionClosed, connect
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
    "AsyncSpinup",
    "AsyncSandbox",
    "AsyncProcess",
    "AsyncAttachment",
    "AsyncPty",
    "AsyncWatcher",
    "AsyncForkResult",
]

#: A callback: a function or a coroutine function, called with each chunk of text.
AsyncOutputCallback = Callable[[str], Union[Any, Awaitable[Any]]]
#: What a write accepts: bytes, text, a binary file object, or a (sync or async) iterable of chunks.
AsyncWriteData = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes], AsyncIterable[bytes]]


async def _maybe_await(v: Any) -> None:
    if inspect.isawaitable(v):
        await v


def _achunks(data: AsyncWriteData) -> bytes | AsyncIterator[bytes]:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)

    async def gen() -> AsyncIterator[bytes]:
        if hasattr(data, "read"):
            f: Any = data
            while True:
                b = f.read(CHUNK)
                if inspect.isawaitable(b):
                    b = await b
                if not b:
                    return
                yield b.encode() if isinstance(b, str) else b
        elif hasattr(data, "__aiter__"):
            async for c in data:
                yield bytes(c)
        else:
            for c in data:
                yield bytes(c)

    return gen()


class _Transport:
    def __init__(self, target: Target, timeout: float | None) -> None:
        self.target = target
        transport = httpx.AsyncHTTPTransport(uds=target.uds) if target.uds else None
        self.http = httpx.AsyncClient(
            base_url=target.base_url,
            headers=target.headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=30.0),
            trust_env=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    @contextlib.contextmanager
    def _errors(self) -> Generator[None, None, None]:
        try:
            yield
        except httpx.TimeoutException as e:
            raise ConnectionError(f"request to the spinup daemon at {self.target.describe()} timed out: {e}", code="timeout") from e
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach the spinup daemon at {self.target.describe()}: {e}", code="connection_error") from e

    async def request(
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
            r = await self.http.request(method, path, params=params, json=json, content=content, headers=headers, timeout=timeout)
        if r.is_error:
            raise error_from(r.status_code, r.content)
        return r

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.request(method, path, **kw)
        return r.json() if r.content else None

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, timeout: Any = None, **kw: Any) -> AsyncIterator[httpx.Response]:
        with self._errors():
            async with self.http.stream(method, path, timeout=httpx.Timeout(timeout, connect=30.0), **kw) as r:
                if r.is_error:
                    await r.aread()
                    raise error_from(r.status_code, r.content)
                yield r

    async def websocket(self, path: str) -> Any:
        return await connect(self.target, path)


async def _recv(ws: Any, timeout: float | None) -> bytes | str:
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"nothing received within {timeout}s") from None


class AsyncSpinup:
    """The asyncio client of one Spinup daemon (see :class:`spinup.Spinup`).

    >>> async with AsyncSpinup() as client:
    ...     async with client.sandboxes.create(env="debian") as sbx:
    ...         print((await sbx.exec("uname -a")).stdout)
    """

    def __init__(self, host: str | None = None, api_key: str | None = None, *, timeout: float | None = 300.0) -> None:
        self._t = _Transport(resolve(host, api_key), timeout)
        self.sandboxes = AsyncSandboxes(self)
        self.snapshots = AsyncSnapshots(self)
        self.secrets = AsyncSecrets(self)
        self.environments = AsyncEnvironments(self)

    @property
    def host(self) -> str:
        return self._t.target.describe()

    async def drivers(self) -> list[DriverCapabilities]:
        return [from_dict(DriverCapabilities, d) for d in await self._t.json("GET", "/v1/drivers")]

    async def driver(self, name: str) -> DriverCapabilities:
        for d in await self.drivers():
            if d.driver == name:
                return d
        raise NotFound(f"driver '{name}' not found", code="not_found")

    async def gc(self) -> GcReport:
        return from_dict(GcReport, await self._t.json("POST", "/v1/gc"))

    async def openapi(self) -> dict[str, Any]:
        return await self._t.json("GET", "/v1/openapi.json")  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncSpinup:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncSpinup(host={self.host!r})"


# --- sandboxes ---------------------------------------------------------------


class _Creating:
    """What ``create`` returns: await it for the sandbox, or use it as an
    ``async with`` block that removes the sandbox at its end."""

    def __init__(self, coro: Awaitable[AsyncSandbox]) -> None:
        self._coro = coro
        self._sbx: AsyncSandbox | None = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sbx = await self._coro
        return self._sbx

    async def __aexit__(self, *exc: Any) -> None:
        if self._sbx is not None:
            await self._sbx.__aexit__(*exc)


class AsyncSandboxes:
    """``client.sandboxes``."""

    def __init__(self, client: AsyncSpinup) -> None:
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
    ) -> _Creating:
        """Create and start a sandbox: ``sbx = await client.sandboxes.create(...)``,
        or ``async with client.sandboxes.create(...) as sbx:`` to have it
        removed (forcibly) at the end. Arguments as :meth:`spinup.Sandboxes.create`."""
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

        async def go() -> AsyncSandbox:
            return AsyncSandbox(self._c, from_dict(SandboxDetails, await self._c._t.json("POST", "/v1/sandboxes", json=body)))

        return _Creating(go())

    async def list(self, labels: Mapping[str, str] | None = None) -> list[AsyncSandbox]:
        params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        return [AsyncSandbox(self._c, from_dict(SandboxDetails, d)) for d in await self._c._t.json("GET", "/v1/sandboxes", params=params)]

    async def get(self, sandbox_id: str) -> AsyncSandbox:
        return AsyncSandbox(self._c, from_dict(SandboxDetails, await self._c._t.json("GET", sb_path(sandbox_id))))

    async def remove(self, sandbox_id: str, *, force: bool = False) -> None:
        await self._c._t.request("DELETE", sb_path(sandbox_id), params={"force": "true"} if force else None)


class AsyncSandbox:
    """A handle on one sandbox (see :class:`spinup.Sandbox`)."""

    def __init__(self, client: AsyncSpinup, details: SandboxDetails) -> None:
        self._c = client
        self._t = client._t
        self.details = details
        self.files = AsyncFiles(self)
        self.processes = AsyncProcesses(self)
        self.ports = AsyncPorts(self)
        self.secrets = AsyncSandboxSecrets(self)

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

    def _update(self, d: Any) -> AsyncSandbox:
        self.details = from_dict(SandboxDetails, d)
        return self

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, env={self.env!r}, driver={self.driver!r}, state={self.state!r})"

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        with contextlib.suppress(NotFound):
            await self.remove(force=True)

    async def refresh(self) -> AsyncSandbox:
        return self._update(await self._t.json("GET", self._path()))

    async def remove(self, *, force: bool = False) -> None:
        await self._c.sandboxes.remove(self.id, force=force)

    async def kill(self) -> None:
        await self.remove(force=True)

    async def set_timeout(self, timeout_s: int) -> AsyncSandbox:
        return self._update(await self._t.json("PUT", self._path("/timeout"), json={"timeout_s": int(timeout_s)}))

    async def pause(self, *, free_memory: bool = False) -> AsyncSandbox:
        return self._update(await self._t.json("POST", self._path("/pause"), json={"free_memory": free_memory}))

    async def resume(self) -> AsyncSandbox:
        return self._update(await self._t.json("POST", self._path("/resume")))

    async def info(self) -> AgentInfo:
        return from_dict(AgentInfo, await self._t.json("GET", self._path("/info")))

    async def events(self) -> list[Transition]:
        return [from_dict(Transition, d) for d in await self._t.json("GET", self._path("/events"))]

    async def update_resources(self, resources: Resources | Mapping[str, Any]) -> AsyncSandbox:
        body = to_dict(resources) if isinstance(resources, Resources) else dict(resources)
        return self._update(await self._t.json("PATCH", self._path("/resources"), json=body))

    async def set_network(
        self,
        policy: NetworkPolicy | Mapping[str, Any] | str | None = None,
        *,
        allow: Sequence[str] | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> NetworkPolicy:
        if policy is None or isinstance(policy, str):
            policy = NetworkPolicy(mode=policy or ("allow" if allow else "none"), allow=list(allow or []), hosts=dict(hosts or {}))
        self._update(await self._t.json("PUT", self._path("/network"), json=_api.network_body(policy)))
        return self.details.network

    # commands

    @overload
    async def exec(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | int | None = ...,
        timeout_ms: int | None = ...,
        input: str | bytes | None = ...,
        on_stdout: AsyncOutputCallback | None = ...,
        on_stderr: AsyncOutputCallback | None = ...,
        check: bool = ...,
        background: Literal[False] = ...,
    ) -> ExecResult: ...

    @overload
    async def exec(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        user: str | int | None = ...,
        timeout_ms: int | None = ...,
        input: str | bytes | None = ...,
        on_stdout: AsyncOutputCallback | None = ...,
        on_stderr: AsyncOutputCallback | None = ...,
        check: bool = ...,
        background: Literal[True],
    ) -> AsyncProcess: ...

    async def exec(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | int | None = None,
        timeout_ms: int | None = None,
        input: str | bytes | None = None,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        check: bool = False,
        background: bool = False,
    ) -> ExecResult | AsyncProcess:
        """Run a command to its end (see :meth:`spinup.Sandbox.exec`)."""
        if background:
            return await self.start(cmd, env=env, cwd=cwd, user=user, timeout_ms=timeout_ms)
        body = _api.exec_body(cmd, env=env, cwd=cwd, user=user, timeout_ms=timeout_ms, input=input)
        if on_stdout is None and on_stderr is None:
            result = from_dict(ExecResult, await self._t.json("POST", self._path("/exec"), json=body, timeout=None))
        else:
            col = _api.Collector(on_stdout, on_stderr)
            async with self._t.stream("POST", self._path("/exec"), params={"stream": "true"}, json=body) as resp:
                async for line in resp.aiter_lines():
                    ev = _api.ndjson_event(line)
                    if ev is not None:
                        await _maybe_await(col.feed(ev))
                        if ev.kind == "exit":
                            break
            result = col.finish()
        if check and not result.ok:
            raise ExecError(result, cmd)
        return result

    async def start(
        self,
        cmd: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | int | None = None,
        timeout_ms: int | None = None,
        stdin: bool = False,
    ) -> AsyncProcess:
        """Start a background process (see :meth:`spinup.Sandbox.start`)."""
        body = _api.exec_body(cmd, env=env, cwd=cwd, user=user, timeout_ms=timeout_ms, background=True, stdin=stdin)
        if stdin:
            ws = await self._t.websocket(self._path("/exec/ws"))
            try:
                await ws.send(_api.json_frame(_api.START, body))
                while True:
                    ev = _api.frame_event(await _recv(ws, 60))
                    if ev is not None and ev.kind == "error":
                        raise ev.error  # type: ignore[misc]
                    if ev is not None and ev.kind == "started":
                        return AsyncProcess(self, int(ev.pid))  # type: ignore[arg-type]
            finally:
                await ws.close()
        async with self._t.stream("POST", self._path("/exec"), params={"stream": "true"}, json=body, timeout=60) as resp:
            async for line in resp.aiter_lines():
                ev = _api.ndjson_event(line)
                if ev is not None and ev.kind == "error":
                    raise ev.error  # type: ignore[misc]
                if ev is not None and ev.kind == "started":
                    return AsyncProcess(self, int(ev.pid))  # type: ignore[arg-type]
        raise SpinupError("the exec stream ended before the process started", code="agent_error")

    async def pty(
        self,
        cmd: Command | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | int | None = None,
        timeout_ms: int | None = None,
    ) -> AsyncPty:
        """An interactive terminal over a WebSocket (see :meth:`spinup.Sandbox.pty`)."""
        body = _api.exec_body(
            cmd if cmd is not None else ["/bin/sh"], env=env, cwd=cwd, user=user, timeout_ms=timeout_ms, pty=(cols, rows), stdin=True
        )
        ws = await self._t.websocket(self._path("/exec/ws"))
        await ws.send(_api.json_frame(_api.START, body))
        p = AsyncPty(ws)
        await p._wait_started()
        return p

    # --- Code interpreter: kernels that live in the sandbox ----------------

    async def run_code(
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
        async with self._t.stream("POST", self._path("/code"), json=body) as resp:
            async for line in resp.aiter_lines():
                await _maybe_await(col.feed(line))
        return col.finish()

    async def code_contexts(self) -> list[CodeContext]:
        return [from_dict(CodeContext, c) for c in await self._t.json("GET", self._path("/code/contexts"))]

    async def create_code_context(self, language: str = "python", *, cwd: str | None = None) -> CodeContext:
        """A context of its own: a new kernel, with its own state."""
        body: dict[str, Any] = {"language": language}
        if cwd is not None:
            body["cwd"] = cwd
        return from_dict(CodeContext, await self._t.json("POST", self._path("/code/contexts"), json=body, timeout=None))

    async def restart_code_context(self, context: str | CodeContext) -> CodeContext:
        """A new kernel for the context; its state is lost."""
        path = self._path(f"/code/contexts/{seg(_api.context_id(context))}/restart")
        return from_dict(CodeContext, await self._t.json("POST", path, timeout=None))

    async def remove_code_context(self, context: str | CodeContext) -> None:
        await self._t.request("DELETE", self._path(f"/code/contexts/{seg(_api.context_id(context))}"))


    async def snapshot(self, name: str | None = None, *, labels: Mapping[str, str] | None = None, memory: bool = False) -> Snapshot:
        body: dict[str, Any] = {"memory": memory}
        if name is not None:
            body["name"] = name
        if labels:
            body["labels"] = dict(labels)
        return from_dict(Snapshot, await self._t.json("POST", self._path("/snapshot"), json=body))

    async def fork(self, count: int = 1, *, driver: str | None = None) -> AsyncForkResult:
        body: dict[str, Any] = {"count": count}
        if driver is not None:
            body["driver"] = driver
        r = await self._t.json("POST", self._path("/fork"), json=body)
        return AsyncForkResult(
            snapshot=from_dict(Snapshot, r["snapshot"]),
            children=[AsyncSandbox(self._c, from_dict(SandboxDetails, d)) for d in r["children"]],
        )

    async def diff(self, since: str | None = None, *, path: str | None = None, content: bool = False) -> Diff:
        params = {k: v for k, v in {"since": since, "path": path}.items() if v is not None}
        if content:
            params["content"] = "true"
        return from_dict(Diff, await self._t.json("GET", self._path("/diff"), params=params))


@dataclass
class AsyncForkResult:
    snapshot: Snapshot
    children: list[AsyncSandbox]


# --- processes ---------------------------------------------------------------


class AsyncProcesses:
    def __init__(self, sbx: AsyncSandbox) -> None:
        self._s = sbx

    async def list(self) -> list[ProcessInfo]:
        return [from_dict(ProcessInfo, d) for d in await self._s._t.json("GET", self._s._path("/processes"))]

    async def get(self, pid: int) -> AsyncProcess:
        for p in await self.list():
            if p.pid == pid:
                return AsyncProcess(self._s, pid)
        raise NotFound(f"process '{pid}' not found", code="not_found")

    async def signal(self, pid: int, signal: int | str = 15) -> None:
        await self._s._t.request("POST", self._s._path(f"/processes/{int(pid)}/signal"), json={"signal": _api.signal_number(signal)})

    async def send_stdin(self, pid: int, data: bytes | str) -> None:
        await self._s._t.request("POST", self._s._path(f"/processes/{int(pid)}/stdin"), content=_achunks(data))

    async def close_stdin(self, pid: int) -> None:
        await self._s._t.request("POST", self._s._path(f"/processes/{int(pid)}/stdin"), params={"close": "true"}, content=b"")


class AsyncProcess:
    """A process in a sandbox, by pid (see :class:`spinup.Process`)."""

    def __init__(self, sbx: AsyncSandbox, pid: int) -> None:
        self.sandbox = sbx
        self.pid = pid

    def __repr__(self) -> str:
        return f"AsyncProcess(sandbox={self.sandbox.id!r}, pid={self.pid})"

    async def info(self) -> ProcessInfo:
        for p in await self.sandbox.processes.list():
            if p.pid == self.pid:
                return p
        raise NotFound(f"process '{self.pid}' not found", code="not_found")

    async def is_running(self) -> bool:
        return (await self.info()).running

    async def send_stdin(self, data: bytes | str) -> None:
        await self.sandbox.processes.send_stdin(self.pid, data)

    async def close_stdin(self) -> None:
        await self.sandbox.processes.close_stdin(self.pid)

    async def signal(self, signal: int | str = 15) -> None:
        await self.sandbox.processes.signal(self.pid, signal)

    async def kill(self) -> None:
        await self.signal(9)

    async def attach(self) -> AsyncAttachment:
        """Attach to its output now (buffered output replayed first); use
        it with ``async with``."""
        a = AsyncAttachment(self)
        a._ws = await self.sandbox._t.websocket(self.sandbox._path(f"/processes/{self.pid}/ws"))
        return a

    async def wait(
        self,
        *,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        async with await self.attach() as a:
            return await a.wait(on_stdout=on_stdout, on_stderr=on_stderr, timeout=timeout)


class AsyncAttachment:
    """A live connection to a process's streams (see :class:`spinup.Attachment`)."""

    def __init__(self, process: AsyncProcess) -> None:
        self.process = process
        self._ws: Any = None
        self._ended = False

    async def next_event(self, timeout: float | None = None) -> _api.Event | None:
        while not self._ended:
            try:
                msg = await _recv(self._ws, timeout)
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

    def __aiter__(self) -> AsyncIterator[_api.Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[_api.Event]:
        while True:
            ev = await self.next_event()
            if ev is None:
                return
            yield ev

    async def send_stdin(self, data: bytes | str) -> None:
        await self._ws.send(_api.encode_frame(_api.STDIN, data.encode() if isinstance(data, str) else data))

    async def close_stdin(self) -> None:
        await self._ws.send(_api.encode_frame(_api.STDIN_CLOSE))

    async def signal(self, signal: int | str = 15) -> None:
        await self._ws.send(_api.json_frame(_api.SIGNAL, {"signal": _api.signal_number(signal)}))

    async def wait(
        self,
        *,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        col = _api.Collector(on_stdout, on_stderr)
        col.pid = self.process.pid
        while True:
            try:
                ev = await self.next_event(timeout)
            except TimeoutError:
                raise SpinupError(f"no output from process {self.process.pid} within {timeout}s", code="timeout") from None
            if ev is None:
                break
            await _maybe_await(col.feed(ev))
        if col.result is None:
            # A re-attach to a process that already exited replays nothing.
            info = await self.process.info()
            if not info.running and info.exit is not None:
                col.feed(_api.Event("exit", exit=info.exit))
        return col.finish()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> AsyncAttachment:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncPty:
    """An interactive terminal session (see :class:`spinup.Pty`)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self.pid: int | None = None
        self.exit: ExitStatus | None = None

    async def _wait_started(self) -> None:
        while self.pid is None:
            ev = _api.frame_event(await _recv(self._ws, 60))
            if ev is None:
                continue
            if ev.kind == "error":
                await self._ws.close()
                raise ev.error  # type: ignore[misc]
            if ev.kind == "started":
                self.pid = ev.pid

    async def send(self, data: bytes | str) -> None:
        await self._ws.send(_api.encode_frame(_api.STDIN, data.encode() if isinstance(data, str) else data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._ws.send(_api.json_frame(_api.RESIZE, {"cols": cols, "rows": rows}))

    async def signal(self, signal: int | str = 2) -> None:
        await self._ws.send(_api.json_frame(_api.SIGNAL, {"signal": _api.signal_number(signal)}))

    async def read(self, timeout: float | None = None) -> bytes:
        while self.exit is None:
            try:
                msg = await _recv(self._ws, timeout)
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

    async def read_until(self, needle: str, timeout: float = 30.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out = b""
        want = needle.encode()
        while want not in out:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{needle!r} not seen within {timeout}s; got {out[-500:]!r}")
            b = await self.read(timeout=left)
            if not b and self.exit is not None:
                raise SpinupError(f"the pty process exited before {needle!r}; got {out[-500:]!r}", code="exited")
            out += b
        return out.decode("utf-8", "replace")

    async def wait(self, timeout: float | None = None) -> ExitStatus:
        while self.exit is None:
            if not await self.read(timeout=timeout) and self.exit is None:
                raise SpinupError("the pty stream ended without an exit status", code="agent_error")
        return self.exit

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> AsyncPty:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


# --- files -------------------------------------------------------------------


class AsyncFiles:
    """``sbx.files`` (see :class:`spinup.Files`)."""

    def __init__(self, sbx: AsyncSandbox) -> None:
        self._s = sbx

    def _p(self, rest: str = "") -> str:
        return self._s._path("/files" + rest)

    async def read(self, path: str) -> bytes:
        return (await self._s._t.request("GET", self._p(), params={"path": path}, timeout=None)).content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def iter_read(self, path: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        async with self._s._t.stream("GET", self._p(), params={"path": path}) as r:
            async for chunk in r.aiter_bytes(chunk_size):
                yield chunk

    async def download(self, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        n = 0
        with contextlib.ExitStack() as st:
            f: Any = st.enter_context(open(dest, "wb")) if isinstance(dest, (str, os.PathLike)) else dest
            async for chunk in self.iter_read(path):
                f.write(chunk)
                n += len(chunk)
        return n

    async def write(self, path: str, data: AsyncWriteData, *, mode: int | None = None, user: str | int | None = None) -> FileInfo:
        params = _api.file_params(path, mode=mode, user=user)
        return from_dict(FileInfo, await self._s._t.json("PUT", self._p(), params=params, content=_achunks(data), timeout=None))

    async def upload(self, local_path: str | os.PathLike[str], path: str, *, mode: int | None = None, user: str | int | None = None) -> FileInfo:
        with open(local_path, "rb") as f:
            return await self.write(path, f, mode=mode, user=user)

    async def stat(self, path: str) -> FileInfo:
        return from_dict(FileInfo, await self._s._t.json("GET", self._p("/stat"), params={"path": path}))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
            return True
        except NotFound:
            return False

    async def list(self, path: str, *, depth: int = 1) -> list[FileInfo]:
        return [from_dict(FileInfo, d) for d in await self._s._t.json("GET", self._p("/list"), params={"path": path, "depth": str(depth)})]

    async def mkdir(self, path: str, *, mode: int | None = None, user: str | int | None = None) -> FileInfo:
        body: dict[str, Any] = {"path": path}
        if mode is not None:
            body["mode"] = mode
        if user is not None:
            body["user"] = str(user)
        return from_dict(FileInfo, await self._s._t.json("POST", self._p("/mkdir"), json=body))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._s._t.request("POST", self._p("/remove"), json={"path": path, "recursive": recursive})

    async def rename(self, src: str, dst: str) -> FileInfo:
        return from_dict(FileInfo, await self._s._t.json("POST", self._p("/rename"), json={"from": src, "to": dst}))

    async def chmod(self, path: str, mode: int) -> FileInfo:
        return from_dict(FileInfo, await self._s._t.json("POST", self._p("/chmod"), json={"path": path, "mode": mode}))

    def watch(self, path: str, *, recursive: bool = False) -> AsyncWatcher:
        """Watch a directory: ``async with sbx.files.watch(path) as w:``
        (entered once the watches are in place), then ``async for ev in w``."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        return AsyncWatcher(self._s._t.stream("GET", self._p("/watch"), params=params))


class AsyncWatcher:
    """Changes in a watched directory, as an async iterator of :class:`WatchEvent`."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm
        self._lines: AsyncIterator[str] | None = None

    async def start(self) -> AsyncWatcher:
        resp: httpx.Response = await self._cm.__aenter__()
        self._lines = resp.aiter_lines()
        try:
            first = await self._next_event()
        except BaseException:
            await self.close()
            raise
        if first is None or first.type != "started":
            await self.close()
            raise SpinupError(f"the watch did not start: {first!r}", code="protocol")
        return self

    async def _next_event(self) -> WatchEvent | None:
        assert self._lines is not None, "use `async with` (or await start()) first"
        async for line in self._lines:
            if line.strip():
                return from_dict(WatchEvent, json.loads(line))
        return None

    def __aiter__(self) -> AsyncWatcher:
        return self

    async def __anext__(self) -> WatchEvent:
        ev = await self._next_event()
        if ev is None:
            raise StopAsyncIteration
        return ev

    async def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> AsyncWatcher:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


# --- ports and secrets of a sandbox -------------------------------------------


class AsyncPorts:
    def __init__(self, sbx: AsyncSandbox) -> None:
        self._s = sbx

    async def list(self) -> list[PortExposure]:
        return [from_dict(PortExposure, d) for d in await self._s._t.json("GET", self._s._path("/ports"))]

    async def expose(self, port: int, *, public: bool = False, unix: bool = False, listen: str | None = None) -> ExposedPort:
        body: dict[str, Any] = {"port": port, "public": public, "unix": unix}
        if listen is not None:
            body["listen"] = listen
        return from_dict(ExposedPort, await self._s._t.json("POST", self._s._path("/ports"), json=body))

    async def unexpose(self, port: int) -> None:
        await self._s._t.request("DELETE", self._s._path(f"/ports/{int(port)}"))


class AsyncSandboxSecrets:
    def __init__(self, sbx: AsyncSandbox) -> None:
        self._s = sbx

    async def attach(self, *secrets: SecretMount | str, mode: str | None = None, hosts: Sequence[str] | None = None) -> list[SecretMount]:
        body = {"attach": [_api.secret_mount(s, mode, hosts) for s in secrets]}
        self._s._update(await self._s._t.json("POST", self._s._path("/secrets"), json=body))
        return self._s.details.secrets

    async def detach(self, *names: str) -> list[SecretMount]:
        self._s._update(await self._s._t.json("POST", self._s._path("/secrets"), json={"detach": list(names)}))
        return self._s.details.secrets

    async def list(self) -> list[SecretMount]:
        return (await self._s.refresh()).details.secrets


# --- daemon-wide resources -----------------------------------------------------


class AsyncSnapshots:
    def __init__(self, client: AsyncSpinup) -> None:
        self._t = client._t

    async def list(self) -> list[Snapshot]:
        return [from_dict(Snapshot, d) for d in await self._t.json("GET", "/v1/snapshots")]

    async def get(self, snapshot: str) -> Snapshot:
        return from_dict(Snapshot, await self._t.json("GET", f"/v1/snapshots/{seg(snapshot)}"))

    async def remove(self, snapshot: str) -> None:
        await self._t.request("DELETE", f"/v1/snapshots/{seg(snapshot)}")

    async def download_layer(self, snapshot: str, dest: str | os.PathLike[str] | IO[bytes]) -> str:
        h = hashlib.sha256()
        with contextlib.ExitStack() as st:
            f: Any = st.enter_context(open(dest, "wb")) if isinstance(dest, (str, os.PathLike)) else dest
            async with self._t.stream("GET", f"/v1/snapshots/{seg(snapshot)}/layer") as r:
                digest = r.headers.get("x-spinup-digest", "")
                async for chunk in r.aiter_bytes(CHUNK):
                    h.update(chunk)
                    f.write(chunk)
        got = "sha256:" + h.hexdigest()
        if digest and got != digest:
            raise SpinupError(f"layer digest mismatch: got {got}, the daemon said {digest}", code="digest_mismatch")
        return got


class AsyncSecrets:
    def __init__(self, client: AsyncSpinup) -> None:
        self._t = client._t

    async def set(self, name: str, value: str | bytes) -> SecretInfo:
        data = value.encode() if isinstance(value, str) else bytes(value)
        r = await self._t.json("PUT", f"/v1/secrets/{seg(name)}", content=data, headers={"content-type": "application/octet-stream"})
        return from_dict(SecretInfo, r)

    async def list(self) -> list[SecretInfo]:
        return [from_dict(SecretInfo, d) for d in await self._t.json("GET", "/v1/secrets")]

    async def get(self, name: str) -> SecretInfo:
        return from_dict(SecretInfo, await self._t.json("GET", f"/v1/secrets/{seg(name)}"))

    async def remove(self, name: str) -> None:
        await self._t.request("DELETE", f"/v1/secrets/{seg(name)}")


class AsyncEnvironments:
    def __init__(self, client: AsyncSpinup) -> None:
        self._t = client._t

    async def list(self) -> list[Environment]:
        return [from_dict(Environment, d) for d in (await self._t.json("GET", "/v1/environments"))["environments"]]

    async def recipes(self) -> builtins.list[str]:
        return list((await self._t.json("GET", "/v1/environments"))["builtin"])

    async def get(self, name: str) -> Environment:
        return from_dict(Environment, await self._t.json("GET", f"/v1/environments/{seg(name)}"))

    async def build(self, name: str, *, on_progress: AsyncOutputCallback | None = None) -> Environment:
        async with self._t.stream("POST", f"/v1/environments/{seg(name)}/build") as r:
            async for line in r.aiter_lines():
                item = _api.build_line(line)
                if item is None:
                    continue
                kind, v = item
                if kind == "progress" and on_progress is not None:
                    await _maybe_await(on_progress(v))
                elif kind == "environment":
                    return from_dict(Environment, v)
                elif kind == "error":
                    raise v
        raise SpinupError(f"the build of {name} ended without a result", code="agent_error")

    async def import_tarball(self, name: str, data: str | os.PathLike[str] | AsyncWriteData) -> Environment:
        with contextlib.ExitStack() as st:
            if isinstance(data, (str, os.PathLike)):
                data = st.enter_context(open(data, "rb"))
            r = await self._t.json("POST", f"/v1/environments/{seg(name)}/import", content=_achunks(data), timeout=None)
        return from_dict(Environment, r)

    async def remove(self, name: str) -> None:
        await self._t.request("DELETE", f"/v1/environments/{seg(name)}")
