"""Exceptions. Every non-2xx answer of the daemon becomes a
:class:`SpinupError` (or one of its subclasses, chosen by HTTP status)
carrying the API's stable ``code`` and its ``message``."""

from __future__ import annotations

from typing import Any

__all__ = [
    "SpinupError",
    "ConnectionError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "QuotaExceeded",
    "InternalError",
    "Unsupported",
    "AgentError",
    "Unavailable",
    "ExecError",
]


class SpinupError(Exception):
    """An error answer of the Spinup API.

    ``code`` is the API's machine-readable code (``not_found``,
    ``invalid_argument``, ``conflict``, ``unsupported``, ``unavailable``,
    ``agent_error``, ``forbidden``, ``quota_exceeded``, ``internal``,
    ``unauthorized``, or a guest agent's
    own code); ``status`` the HTTP status (``None`` when no answer came).
    ``driver`` and ``capability`` are set on ``unsupported``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        driver: str | None = None,
        capability: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.driver = driver
        self.capability = capability

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class ConnectionError(SpinupError):  # noqa: A001 - shadows the builtin on purpose, inside spinup.errors
    """The daemon could not be reached (no answer at all)."""


class BadRequest(SpinupError):
    """400: a malformed request or an argument out of range (``invalid_argument``)."""


class Unauthorized(SpinupError):
    """401: a TCP listener was given no API key, or the wrong one."""


class Forbidden(SpinupError):
    """403: the admin's operation (keys, the audit log, gc, environment
    changes) asked with a tenant's key."""


class QuotaExceeded(SpinupError):
    """429: the key's tenant is at its sandbox, vCPU or memory quota."""


class NotFound(SpinupError):
    """404: the sandbox, snapshot, file, process, secret… does not exist."""


class Conflict(SpinupError):
    """409: the object is in a state where the operation cannot run
    (a running sandbox removed without force, a paused one exec'd, a secret
    still attached…)."""


class PayloadTooLarge(SpinupError):
    """413: a body over the daemon's limit."""


class InternalError(SpinupError):
    """500: something failed on the host; the message says what."""


class AgentError(SpinupError):
    """502: the in-sandbox agent could not be reached or failed."""


class Unsupported(SpinupError):
    """501: the sandbox's driver cannot do this (``driver``, ``capability``)."""


class Unavailable(SpinupError):
    """503: a host dependency is missing or broken."""


class ExecError(SpinupError):
    """A command run with ``check=True`` exited non-zero; ``result`` is its
    :class:`~spinup.models.ExecResult`."""

    def __init__(self, result: Any, argv: Any) -> None:
        super().__init__(
            f"command {argv!r} exited {result.exit_code}: {result.stderr.strip()[-500:]}",
            code="exit_status",
        )
        self.result = result


_BY_STATUS: dict[int, type[SpinupError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: QuotaExceeded,
    500: InternalError,
    501: Unsupported,
    502: AgentError,
    503: Unavailable,
}


def error_from(status: int, body: bytes) -> SpinupError:
    """The exception for an error answer (``{code, message, driver?, capability?}``)."""
    import json

    code, message, driver, capability = "", "", None, None
    try:
        v = json.loads(body)
        if isinstance(v, dict):
            code = str(v.get("code") or "")
            message = str(v.get("message") or "")
            driver = v.get("driver")
            capability = v.get("capability")
    except ValueError:
        pass
    if not message:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    cls = _BY_STATUS.get(status, SpinupError)
    return cls(message, code=code or f"http_{status}", status=status, driver=driver, capability=capability)
