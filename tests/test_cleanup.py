"""A client that leaves frees its subscriber, queue, writer and topic reference
at once. The gateway runs in the test's own loop here so its state can be
inspected; everything else about it is real (hypercorn, sockets, upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.app import GatewayApp
from gateway.hyperglue import lean_requests_installed
from tests.support.clients import RawSSEClient, open_sse
from tests.support.inprocess import serve_inprocess
from tests.support.upstream import FakeUpstream


@pytest.fixture(params=["lean", "plain_hypercorn"])
async def inprocess(
    upstream: FakeUpstream, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[GatewayApp, int]]:
    """As the gateway runs (hyperglue's lighter per-request objects: a callback
    notices ``http.disconnect``), and on hypercorn's own objects (a task waits
    for it): both must free everything."""
    config = (
        "topics:\n"
        f"  - {{name: t, path: /t, upstream: '{upstream.url('/t')}', linger_s: 0.2}}\n"
        f"  - {{name: o, path: '/o/{{id}}', upstream: '{upstream.url('/o/{id}')}'}}\n"
    )
    lean = request.param == "lean"
    async with serve_inprocess(config, lean=lean) as served:
        assert lean_requests_installed() is lean
        yield served


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_disconnect_frees_everything(
    inprocess: tuple[GatewayApp, int], upstream: FakeUpstream
) -> None:
    app, port = inprocess
    assert app.registry is not None
    baseline = len(asyncio.all_tasks())
    streams = [await open_sse(f"http://127.0.0.1:{port}/t") for _ in range(5)]
    raw = await RawSSEClient.connect("127.0.0.1", port, "/t")
    await upstream.wait_connections("/t", 1)
    live = app.registry.live["/t"]
    await wait_until(lambda: len(live.channel.subscribers) == 6)
    assert live.refs == 6
    assert len(app.housekeeper.subscribers) == 6
    upstream.publish("/t", "x", id="1")
    for stream in streams:
        await stream.wait_events(1)

    for stream in streams:
        await stream.aclose()
    raw.abort()  # an RST, not a polite close
    await wait_until(lambda: not live.channel.subscribers)
    assert live.refs == 0
    assert not app.housekeeper.subscribers
    # the linger (0.2 s) passes: instance and upstream connection are gone
    await wait_until(lambda: "/t" not in app.registry.live)
    await upstream.wait_closed("/t")
    await wait_until(lambda: len(asyncio.all_tasks()) <= baseline)


async def test_slow_consumer_abort_frees_everything(
    inprocess: tuple[GatewayApp, int], upstream: FakeUpstream
) -> None:
    app, port = inprocess
    assert app.registry is not None
    slow = await RawSSEClient.connect("127.0.0.1", port, "/o/1", rcvbuf=4096)
    await upstream.wait_connections("/o/1", 1)
    slow.pause()
    live = app.registry.live["/o/1"]
    for n in range(3000):
        upstream.publish("/o/1", "y" * 4000, id=str(n))
        if n % 100 == 0:
            await asyncio.sleep(0)
    await wait_until(lambda: not live.channel.subscribers, timeout=15)
    assert live.refs == 0
    assert not app.housekeeper.subscribers
    await slow.close()
