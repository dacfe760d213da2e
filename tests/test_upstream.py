"""Upstream streams that misbehave: oversized, malformed, absent. And the
backoff that spaces reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.upstream import Backoff
from tests.support.clients import open_sse
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream


def topic_config(upstream: FakeUpstream, **upstream_keys: object) -> dict[str, object]:
    return {
        "upstream": {"backoff_initial_ms": 50, "backoff_max_ms": 200, **upstream_keys},
        "topics": [{"name": "t", "path": "/t", "upstream": upstream.url("/t")}],
    }


async def test_oversized_events_are_discarded_and_the_stream_goes_on(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = topic_config(upstream, max_line_bytes=1024, max_event_bytes=4096)
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "before", id="1")
        upstream.send_raw("/t", b"id: 2\ndata: " + b"x" * 2000 + b"\n\n")  # line too long
        upstream.send_raw("/t", b"id: 3\n" + b"data: yyyy\n" * 1000 + b"\n")  # event too large
        upstream.send_raw("/t", b"data: " + b"z" * 3_000_000)  # no newline at all, 3 MB
        upstream.send_raw("/t", b"\n\n")
        upstream.publish("/t", "after", id="4")
        events = await stream.wait_events(2)
        assert [(e.id, e.data) for e in events] == [("1", "before"), ("4", "after")]
        assert len(upstream.connections) == 1  # no reconnect needed
        assert gateway.log_text().count("upstream event discarded") == 3


async def test_invalid_utf8_is_replaced_not_fatal(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with GatewayProcess(topic_config(upstream), tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        upstream.send_raw("/t", b"id: 1\ndata: caf\xc3\xa9 \xff\xfe\n\n")
        (event,) = await stream.wait_events(1)
        assert event.data == "café \ufffd\ufffd"


async def test_refused_upstream_is_retried_until_it_appears(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    await upstream.stop()  # nothing listens on its port now
    async with GatewayProcess(topic_config(upstream), tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await asyncio.sleep(1.0)
        assert stream.status == 200
        assert not stream.closed
        await upstream.start()
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "finally", id="1")
        (event,) = await stream.wait_events(1)
        assert event.data == "finally"
        assert "reason=connect" in gateway.log_text()


def test_backoff_grows_is_bounded_and_honours_retry() -> None:
    backoff = Backoff(initial_ms=100, max_ms=1000)
    delays = [backoff.next_delay_s() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    backoff.retry_ms = 400  # the upstream's own retry: is the base
    assert 0.2 <= backoff.next_delay_s() <= 0.4
    backoff.retry_ms = 60_000  # but never beyond the configured bounds
    assert backoff.next_delay_s() <= 1.0
    backoff.reset()
    backoff.retry_ms = 1  # nor below them
    assert backoff.next_delay_s() >= 0.05
