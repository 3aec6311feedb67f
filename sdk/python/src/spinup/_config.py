"""Where the daemon is: the same rules as the ``spinup`` CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_SOCKET = "/run/spinup/spinup.sock"


@dataclass(frozen=True)
class Target:
    """A resolved daemon address."""

    #: The unix socket path, or ``None`` for TCP.
    uds: str | None
    #: ``http://localhost`` over a socket, else ``http://HOST:PORT``.
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ws_base(self) -> str:
        return "ws" + self.base_url[len("http") :]

    def describe(self) -> str:
        return self.uds if self.uds is not None else self.base_url


def resolve(host: str | None = None, api_key: str | None = None) -> Target:
    """``host`` (else ``$SPINUP_HOST``, else the default socket) is a socket
    path, ``unix://PATH`` or ``http://HOST:PORT``; ``api_key`` (else
    ``$SPINUP_API_KEY``) is sent as ``Authorization: Bearer <key>``."""
    host = host if host is not None else (os.environ.get("SPINUP_HOST") or DEFAULT_SOCKET)
    if api_key is None:
        api_key = os.environ.get("SPINUP_API_KEY") or None
    headers = {"User-Agent": "spinup-python"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    h = os.fspath(host)
    if h.startswith(("http://", "https://")):
        return Target(uds=None, base_url=h.rstrip("/"), headers=headers)
    if h.startswith("unix://"):
        h = h[len("unix://") :]
    if h.startswith("/") or h.startswith("."):
        return Target(uds=h, base_url="http://localhost", headers=headers)
    raise ValueError(f"spinup host {host!r} must be a socket path, unix://PATH or http://HOST:PORT")
