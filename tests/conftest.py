"""Shared fixtures. Every async test runs on uvloop, like the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from tests.support.gateway import ALL_LOGS
from tests.support.upstream import FakeUpstream

# Nothing that identifies a credential may reach a gateway log line: JWTs all
# start with "eyJ", tickets with "t1.", and query strings (which carry tokens)
# are never logged.
CREDENTIAL_MARKS = (b"eyJ", b"t1.", b"token=", b"Bearer ")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session", autouse=True)
def no_credentials_in_any_gateway_log() -> Iterator[None]:
    yield
    leaks = []
    for path in ALL_LOGS:
        if path.exists():
            text = path.read_bytes()
            leaks += [f"{path}: {mark!r}" for mark in CREDENTIAL_MARKS if mark in text]
    assert not leaks, f"credentials in gateway logs: {leaks}"
