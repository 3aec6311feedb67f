"""The SDK's tests run against a live daemon:

- ``SPINUP_HOST`` / ``SPINUP_API_KEY``: the daemon the suite talks to
  (a socket path or http://HOST:PORT), as the SDK reads them;
- ``SPINUP_TEST_ENV``: the environment sandboxes are made from (default
  ``busybox``; it must be built);
- ``SPINUP_TEST_CODE_ENV``: the environment for the code interpreter's
  tests (default ``code-interpreter``);
- ``SPINUP_TEST_DRIVER``: the driver (default ``container``);
- ``SPINUP_TEST_SOCKET`` and ``SPINUP_TEST_TCP_HOST`` (optional): the same
  daemon's socket and TCP listener, for the tests that use both
  transports at once (skipped without them).
"""

from __future__ import annotations

import os
import uuid

import pytest

import spinup

ENV = os.environ.get("SPINUP_TEST_ENV", "busybox")
CODE_ENV = os.environ.get("SPINUP_TEST_CODE_ENV", "code-interpreter")
DRIVER = os.environ.get("SPINUP_TEST_DRIVER", "container")
#: Every sandbox the suite makes carries this label, so a run can find
#: (and remove) what it left.
RUN = {"spinup.sdk-test": uuid.uuid4().hex[:12]}


@pytest.fixture(scope="session")
def client():
    c = spinup.Spinup()
    yield c
    for s in c.sandboxes.list(labels=RUN):
        s.kill()
    c.close()


@pytest.fixture
def sbx(client):
    with client.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN) as s:
        yield s


@pytest.fixture
async def aclient():
    async with spinup.AsyncSpinup() as c:
        yield c


@pytest.fixture
async def asbx(aclient):
    async with aclient.sandboxes.create(env=ENV, driver=DRIVER, labels=RUN) as s:
        yield s


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
