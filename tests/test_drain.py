"""Shutdown drain: streams end spread over a window, each with a fresh
jittered retry:, and new streams are turned away with 200 + retry:."""

from __future__ import annotations

import asyncio
import time

from tests.support.clients import SSEStream, open_sse, request
from tests.support.inprocess import serve_inprocess
from tests.support.upstream import FakeUpstream


async def test_drain_spreads_stream_ends_over_the_window(upstream: FakeUpstream) -> None:
    config = (
        "stream: {retry_min_ms: 5000, retry_max_ms: 9000}\n"
        f"topics: [{{name: t, path: /t, upstream: '{upstream.url('/t')}'}}]\n"
    )
    async with serve_inprocess(config) as (app, port):
        streams = [await open_sse(f"http://127.0.0.1:{port}/t") for _ in range(30)]
        for stream in streams:
            await stream.wait_bytes(b"id: ")
        started = time.monotonic()
        drain = asyncio.create_task(app.drain(2.0))
        await asyncio.sleep(0.1)
        assert not app.ready
        # a new stream during the drain: 200 and a retry, not an error
        status, headers, body = await request("127.0.0.1", port, "GET", "/t")
        assert status == 200
        assert dict(headers)["content-type"].startswith("text/event-stream")
        assert body.startswith(b"retry: ")

        async def ended(stream: SSEStream) -> float:
            await stream.wait_closed(timeout=5)
            return time.monotonic() - started

        ended_at = await asyncio.gather(*(ended(stream) for stream in streams))
        await asyncio.wait_for(drain, 5)
        assert time.monotonic() - started < 3.0  # window + 1 s at most
        assert max(ended_at) - min(ended_at) > 0.5  # spread, not all at once
        for stream in streams:
            # the last thing each stream said was a fresh retry (5..9 s)
            assert stream.raw.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"retry: ")
            assert stream.retry is not None
            assert 5000 <= stream.retry <= 9000
        assert not app.housekeeper.subscribers


async def test_readyz_follows_eager_upstreams_and_the_drain(upstream: FakeUpstream) -> None:
    await upstream.stop()  # the eager topic's upstream is down at first
    config = (
        "upstream: {backoff_initial_ms: 20, backoff_max_ms: 50}\n"
        f"topics: [{{name: t, path: /t, upstream: '{upstream.url('/t')}', eager: true}}]\n"
    )
    async with serve_inprocess(config) as (app, port):
        status, _, body = await request("127.0.0.1", port, "GET", "/readyz")
        assert (status, body) == (503, b"not ready: upstream of /t not connected\n")
        await upstream.start()
        await upstream.wait_connections("/t", 1)
        for _ in range(100):
            status, _, body = await request("127.0.0.1", port, "GET", "/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.02)
        assert (status, body) == (200, b"ready\n")
        drain = asyncio.create_task(app.drain(0.2))
        await asyncio.sleep(0)
        status, _, body = await request("127.0.0.1", port, "GET", "/readyz")
        assert (status, body) == (503, b"not ready: draining\n")
        assert (await request("127.0.0.1", port, "GET", "/healthz"))[0] == 200
        await drain
