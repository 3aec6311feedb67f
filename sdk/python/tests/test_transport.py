"""Where the client connects, and with which key."""

from __future__ import annotations

import os

import pytest

import spinup
from spinup._config import DEFAULT_SOCKET, resolve

from conftest import DRIVER, ENV, RUN

SOCKET = os.environ.get("SPINUP_TEST_SOCKET")
TCP = os.environ.get("SPINUP_TEST_TCP_HOST")
KEY = os.environ.get("SPINUP_API_KEY")


def test_host_resolution(monkeypatch):
    monkeypatch.delenv("SPINUP_HOST", raising=False)
    monkeypatch.delenv("SPINUP_API_KEY", raising=False)
    t = resolve()
    assert (t.uds, t.base_url, "Authorization" in t.headers) == (DEFAULT_SOCKET, "http://localhost", False)
    assert resolve("unix:///x/s.sock").uds == "/x/s.sock"
    t = resolve("http://127.0.0.1:9/", "k")
    assert (t.uds, t.base_url, t.ws_base, t.headers["Authorization"]) == (None, "http://127.0.0.1:9", "ws://127.0.0.1:9", "Bearer k")
    monkeypatch.setenv("SPINUP_HOST", "http://h:1")
    monkeypatch.setenv("SPINUP_API_KEY", "envkey")
    t = resolve()
    assert (t.base_url, t.headers["Authorization"]) == ("http://h:1", "Bearer envkey")
    with pytest.raises(ValueError):
        resolve("h:1")


def test_unreachable_daemon_is_a_connection_error(tmp_path):
    with spinup.Spinup(str(tmp_path / "no.sock")) as c:
        with pytest.raises(spinup.ConnectionError) as e:
            c.drivers()
    assert "no.sock" in str(e.value)


@pytest.mark.skipif(not (SOCKET and TCP and KEY), reason="needs SPINUP_TEST_SOCKET, SPINUP_TEST_TCP_HOST and SPINUP_API_KEY")
def test_socket_and_tcp_see_the_same_daemon():
    with spinup.Spinup(SOCKET) as over_socket, spinup.Spinup(TCP, KEY) as over_tcp:
        with over_socket.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN) as s:
            t = over_tcp.sandboxes.get(s.id)
            assert t.exec("echo via-tcp").stdout == "via-tcp\n"
            with t.pty() as p:  # the WebSocket over TCP carries the key too
                p.send("echo pty-over-tcp; exit\n")
                p.read_until("pty-over-tcp\r\n")


@pytest.mark.skipif(not TCP, reason="needs SPINUP_TEST_TCP_HOST")
async def test_wrong_or_missing_key_is_unauthorized(monkeypatch):
    monkeypatch.delenv("SPINUP_API_KEY", raising=False)
    for key in ("definitely-wrong", None):
        with spinup.Spinup(TCP, key) as c:
            with pytest.raises(spinup.Unauthorized) as e:
                c.sandboxes.list()
            assert (e.value.code, e.value.status) == ("unauthorized", 401)
        async with spinup.AsyncSpinup(TCP, key) as ac:
            with pytest.raises(spinup.Unauthorized):
                await ac.drivers()
    # The WebSocket handshake is refused the same way.
    with spinup.Spinup(TCP, "definitely-wrong") as c:
        sbx = spinup.Sandbox(c, spinup.SandboxDetails(id="ffffffffffff"))
        with pytest.raises(spinup.Unauthorized):
            sbx.pty()


@pytest.mark.skipif(not os.environ.get("SPINUP_TEST_INSTALLED"), reason="set when the suite must run the pip-installed package")
def test_the_installed_package_is_under_test():
    assert "site-packages" in spinup.__file__, spinup.__file__
    import importlib.resources

    assert importlib.resources.files("spinup").joinpath("py.typed").is_file()
