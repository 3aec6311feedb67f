"""Typed answers of the API, as dataclasses. Unknown fields the daemon may
add later are ignored; missing ones take their defaults."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

__all__ = [
    "Resources",
    "NetworkPolicy",
    "SecretMount",
    "PortExposure",
    "ExposedPort",
    "NetSlot",
    "SandboxDetails",
    "AgentInfo",
    "Transition",
    "ExitStatus",
    "ExecResult",
    "ProcessInfo",
    "FileInfo",
    "WatchEvent",
    "EnvironmentConfig",
    "Environment",
    "Snapshot",
    "Change",
    "Diff",
    "SecretInfo",
    "DriverCapabilities",
    "GcReport",
    "CodeResult",
    "CodeError",
    "Execution",
    "CodeContext",
]

T = TypeVar("T")


def from_dict(cls: type[T], d: Any) -> T:
    """Build a dataclass from JSON, converting nested dataclasses (and
    lists and dicts of them) by the field's annotation."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    kw = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get("json", f.name)
        if key in d:
            kw[f.name] = _convert(hints[f.name], d[key])
    return cls(**kw)


def _convert(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], v) if len(args) == 1 else v
    if origin is list:
        (a,) = typing.get_args(tp)
        return [_convert(a, x) for x in v]
    if origin is dict:
        _, a = typing.get_args(tp)
        return {k: _convert(a, x) for k, x in v.items()}
    if dataclasses.is_dataclass(tp) and isinstance(v, dict):
        return from_dict(tp, v)  # type: ignore[arg-type]
    if tp is float and isinstance(v, int):
        return float(v)
    return v


def to_dict(obj: Any) -> Any:
    """JSON for a request: dataclasses by their JSON names, ``None`` fields left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is not None:
                out[f.metadata.get("json", f.name)] = to_dict(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@dataclass
class Resources:
    """A sandbox's limits. In a create, unset (``None``) fields take the daemon's defaults."""

    vcpus: float | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    pids: int | None = None


@dataclass
class NetworkPolicy:
    """What a sandbox may reach: ``mode`` is ``none`` (loopback only),
    ``allow`` (only the CIDRs and domain names in ``allow``) or ``open``
    (everything but the host and its private networks); ``hosts`` adds
    /etc/hosts entries."""

    mode: str = "none"
    allow: list[str] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)


@dataclass
class SecretMount:
    """A secret projected into a sandbox: ``mode`` ``file`` (/run/secrets/NAME),
    ``env`` (an environment variable) or ``proxy`` (substituted by the
    egress proxy for ``hosts`` only; the sandbox sees ``placeholder``)."""

    name: str
    mode: str | None = None
    hosts: list[str] | None = None
    placeholder: str | None = None


@dataclass
class PortExposure:
    """An exposed port as a sandbox lists it (the token itself is shown only once, by expose)."""

    port: int
    address: str = ""
    public: bool = False
    token_sha256: str | None = None


@dataclass(repr=False)
class ExposedPort:
    """The answer of ``expose``: where the port is reachable, and its
    access token (shown only here; never printed by ``repr``)."""

    port: int
    address: str = ""
    url: str | None = None
    public: bool = False
    token: str | None = None

    def __repr__(self) -> str:
        tok = "<redacted>" if self.token else None
        return f"ExposedPort(port={self.port}, address={self.address!r}, url={self.url!r}, public={self.public}, token={tok})"


@dataclass
class NetSlot:
    index: int = 0
    host_if: str = ""
    gateway: str = ""
    address: str = ""
    prefix: int = 0


@dataclass
class SandboxDetails:
    """A sandbox as the daemon describes it (``GET /v1/sandboxes/{id}``)."""

    id: str
    env: str = ""
    env_digest: str = ""
    driver: str = ""
    state: str = ""
    reason: str | None = None
    resources: Resources = field(default_factory=Resources)
    timeout_s: int | None = None
    expires_at: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0
    layers: list[str] = field(default_factory=list)
    snapshot: str | None = None
    on_timeout: str = "destroy"
    auto_resume: bool = False
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    net: NetSlot | None = None
    secrets: list[SecretMount] = field(default_factory=list)
    ports: list[PortExposure] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class AgentInfo:
    """The in-sandbox agent's version, uptime and resource usage (``info``)."""

    protocol: int = 0
    version: str = ""
    pid: int = 0
    hostname: str = ""
    uptime_ms: int = 0
    processes: int = 0
    agent_rss_bytes: int = 0
    memory_bytes: int | None = None
    cpu_usage_us: int | None = None
    load_avg: list[float] = field(default_factory=list)
    disk_used_bytes: int | None = None
    disk_total_bytes: int | None = None


@dataclass
class Transition:
    """One recorded lifecycle transition (``from_`` is JSON ``from``)."""

    to: str
    from_: str | None = field(default=None, metadata={"json": "from"})
    reason: str | None = None
    at: int = 0


@dataclass
class ExitStatus:
    exit_code: int = 0
    signal: int | None = None
    timed_out: bool = False
    message: str | None = None


@dataclass
class ExecResult:
    """How a command ended and what it printed."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    signal: int | None = None
    timed_out: bool = False
    message: str | None = None
    truncated: bool = False
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class ProcessInfo:
    pid: int
    argv: list[str] = field(default_factory=list)
    background: bool = False
    pty: bool = False
    running: bool = False
    exit: ExitStatus | None = None
    started_at_ms: int = 0


@dataclass
class FileInfo:
    """A path's metadata (``stat``, ``list``, and the answer of writes)."""

    path: str
    name: str = ""
    kind: str = ""
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ms: int = 0
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


@dataclass
class WatchEvent:
    """One change in a watched directory: ``type`` is ``create``, ``write``,
    ``remove``, ``rename`` (the old name), ``chmod`` or ``overflow``."""

    type: str
    path: str | None = None
    is_dir: bool = False


@dataclass
class EnvironmentConfig:
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""


@dataclass
class Environment:
    name: str
    digest: str = ""
    layers: list[str] = field(default_factory=list)
    config: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    size_bytes: int = 0
    created_at: int = 0


@dataclass
class Snapshot:
    id: str
    name: str | None = None
    sandbox_id: str = ""
    driver: str = ""
    env: str = ""
    parent_snapshot: str | None = None
    layer: str = ""
    layers: list[str] = field(default_factory=list)
    config: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    resources: Resources = field(default_factory=Resources)
    labels: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    created_at: int = 0
    ephemeral: bool = False
    memory: str | None = None


@dataclass
class Change:
    """One path that differs: ``kind`` is ``added``, ``modified`` or
    ``deleted``; ``type`` ``file``, ``dir``, ``symlink`` or ``other``."""

    path: str
    kind: str = ""
    type: str = ""
    size: int = 0


@dataclass
class Diff:
    sandbox: str
    since: str | None = None
    changes: list[Change] = field(default_factory=list)
    before: str | None = None
    after: str | None = None

    def paths(self, kind: str | None = None) -> list[str]:
        """The changed paths (of one ``kind`` if given)."""
        return [c.path for c in self.changes if kind is None or c.kind == kind]


@dataclass
class SecretInfo:
    """A secret's name and times (values never come back)."""

    name: str
    created_at: int = 0
    updated_at: int = 0


@dataclass
class DriverCapabilities:
    driver: str
    isolation: str = ""
    available: bool = False
    reason: str | None = None
    backend: str | None = None
    exec: bool = False
    pty: bool = False
    files: bool = False
    fs_snapshot: bool = False
    memory_snapshot: bool = False
    fork: bool = False
    pause_resume: bool = False
    network_policy: bool = False
    port_exposure: bool = False
    live_resource_update: bool = False
    own_kernel: bool = False
    per_process_limits: bool = False


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class CodeResult:
    """A rich output of code: the value of the last expression
    (``is_main_result``) or something displayed (a chart). ``data`` is its
    MIME bundle (``text/plain``, ``text/html``, ``image/png`` as base64,
    ``application/json``, ...)."""

    is_main_result: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str | None:
        v = self.data.get("text/plain")
        return v if isinstance(v, str) else None

    @property
    def html(self) -> str | None:
        v = self.data.get("text/html")
        return v if isinstance(v, str) else None

    @property
    def png(self) -> bytes | None:
        """The PNG's bytes (decoded from the bundle's base64)."""
        v = self.data.get("image/png")
        if not isinstance(v, str):
            return None
        import base64

        return base64.b64decode(v)

    @property
    def json(self) -> Any:
        return self.data.get("application/json")


@dataclass
class CodeError:
    """What the code raised. ``TimeoutError``: the run's timeout interrupted
    it (the context keeps its state); ``KernelDied``: the code killed its
    kernel (the next run starts a new one)."""

    name: str = ""
    value: str = ""
    traceback: str = ""


@dataclass
class Execution:
    """One run of code, whole."""

    stdout: str = ""
    stderr: str = ""
    results: list[CodeResult] = field(default_factory=list)
    error: CodeError | None = None
    execution_count: int | None = None
    timed_out: bool = False
    truncated: bool = False

    @property
    def text(self) -> str | None:
        """The last expression's value as text, if it had one."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None


@dataclass
class CodeContext:
    """A kernel and its state inside a sandbox."""

    id: str = ""
    language: str = "python"
    cwd: str = ""
