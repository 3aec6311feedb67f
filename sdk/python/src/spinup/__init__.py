"""Spinup: sandboxes for AI agents, from Python.

>>> from spinup import Spinup
>>> client = Spinup()                      # $SPINUP_HOST, else /run/spinup/spinup.sock
>>> with client.sandboxes.create(env="debian") as sbx:
...     print(sbx.exec(["echo", "hello"]).stdout)
hello

:class:`Spinup` is the synchronous client, :class:`AsyncSpinup` the
asyncio one; both speak the daemon's native ``/v1`` API.
"""

from ._async import AsyncAttachment, AsyncForkResult, AsyncProcess, AsyncPty, AsyncSandbox, AsyncSpinup, AsyncWatcher
from ._api import Event as ProcessEvent
from ._config import DEFAULT_SOCKET
from ._sync import Attachment, ForkResult, Process, Pty, Sandbox, Spinup, Watcher
from .errors import (
    AgentError,
    BadRequest,
    Conflict,
    ConnectionError,
    ExecError,
    Forbidden,
    InternalError,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    SpinupError,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from .models import (
    AgentInfo,
    Change,
    CodeContext,
    CodeError,
    CodeResult,
    Diff,
    DriverCapabilities,
    Environment,
    ExecResult,
    Execution,
    ExitStatus,
    ExposedPort,
    FileInfo,
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
)

__version__ = "0.1.0"

__all__ = [
    "Spinup",
    "AsyncSpinup",
    "Sandbox",
    "AsyncSandbox",
    "Process",
    "AsyncProcess",
    "Attachment",
    "AsyncAttachment",
    "Pty",
    "AsyncPty",
    "Watcher",
    "AsyncWatcher",
    "ForkResult",
    "AsyncForkResult",
    "DEFAULT_SOCKET",
    "ProcessEvent",
    "SpinupError",
    "ConnectionError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Forbidden",
    "QuotaExceeded",
    "Conflict",
    "PayloadTooLarge",
    "InternalError",
    "AgentError",
    "Unsupported",
    "Unavailable",
    "ExecError",
    "AgentInfo",
    "Change",
    "Diff",
    "DriverCapabilities",
    "Environment",
    "ExecResult",
    "Execution",
    "CodeResult",
    "CodeError",
    "CodeContext",
    "ExitStatus",
    "ExposedPort",
    "FileInfo",
    "NetworkPolicy",
    "PortExposure",
    "ProcessInfo",
    "Resources",
    "SandboxDetails",
    "SecretInfo",
    "SecretMount",
    "Snapshot",
    "Transition",
    "WatchEvent",
]
