"""WebSocket connections for both clients, over ``websockets``' asyncio
implementation. The sync client drives it from one private event-loop
thread: ``websockets.sync`` (17.x) can drop the messages that arrive just
before the server closes, which is exactly where an exec's Exit frame is."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from websockets.asyncio import client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ._config import Target
from .errors import ConnectionError, error_from

__all__ = ["connect", "SyncWebSocket", "ConnectionClosed"]


async def connect(target: Target, path: str) -> ws_client.ClientConnection:
    uri = target.ws_base + path
    kw: dict[str, Any] = dict(
        additional_headers=target.headers,
        max_size=16 << 20,
        compression=None,
        open_timeout=30,
        ping_interval=None,
    )
    try:
        if target.uds:
            return await ws_client.unix_connect(target.uds, uri, **kw)
        return await ws_client.connect(uri, proxy=None, **kw)
    except InvalidStatus as e:
        raise error_from(e.response.status_code, bytes(e.response.body or b"")) from None
    except OSError as e:
        raise ConnectionError(f"cannot reach the spinup daemon at {target.describe()}: {e}", code="connection_error") from e


class _Loop:
    """One daemon thread running an event loop, shared by sync clients."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="spinup-ws", daemon=True).start()
                cls._loop = loop
            return cls._loop


def _run(coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, _Loop.get()).result()


class SyncWebSocket:
    """A blocking face on an asyncio WebSocket connection."""

    def __init__(self, target: Target, path: str) -> None:
        self._ws: ws_client.ClientConnection = _run(connect(target, path))

    def send(self, data: bytes) -> None:
        _run(self._ws.send(data))

    def recv(self, timeout: float | None = None) -> bytes | str:
        """The next message; ``TimeoutError`` past ``timeout`` seconds,
        ``ConnectionClosed`` at the end."""

        async def go() -> bytes | str:
            try:
                return await asyncio.wait_for(self._ws.recv(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"nothing received within {timeout}s") from None

        return _run(go())  # type: ignore[no-any-return]

    def close(self) -> None:
        try:
            _run(self._ws.close())
        except Exception:
            pass
