"""Nothing lost, nothing doubled across reconnects: clients that drop at random
moments while the upstream publishes at 200 events/s, and come back with
their last event id, end with exactly the upstream's sequence. Single-topic and
multiplexed streams, through upstream restarts and upstream replays."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast
from urllib.parse import quote

import httpx
import pytest

from tests.support.clients import SSEStream, open_sse, request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

RATE = 200  # events per second, over all topics
SEEDS = range(12)


def config(upstream: FakeUpstream, *paths: str) -> dict[str, object]:
    return {
        "upstream": {"backoff_initial_ms": 20, "backoff_max_ms": 100},
        "topics": [
            {"name": path.strip("/"), "path": path, "upstream": upstream.url(path)}
            for path in paths
        ],
    }


async def publish_at_rate(upstream: FakeUpstream, paths: list[str], count: int) -> None:
    """``count`` events on each path, round robin, at RATE events/s in total."""
    interval = 1 / RATE
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    for n in range(1, count + 1):
        for path in paths:
            upstream.publish(path, f"{path} {n}", id=str(n))
            sent += 1
            delay = start + sent * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


async def flaky_client(
    url: str,
    seed: int,
    done: Callable[[list[tuple[str, str]]], bool],
    client: httpx.AsyncClient,
    ready: asyncio.Semaphore,
) -> list[tuple[str, str]]:
    """Connect, read for a random while, drop, wait a random while, resume
    with Last-Event-ID; repeat until ``done(events)``. Returns every
    (type, data) received, in order."""
    rng = random.Random(seed)
    received: list[tuple[str, str]] = []
    last_id: str | None = None
    for _ in range(500):
        headers = {"last-event-id": last_id} if last_id is not None else {}
        stream = await open_sse(url, headers=headers, client=client)
        try:
            if last_id is None:  # a browser too has no cursor until the first id
                await stream.wait_bytes(b"id: ")
                ready.release()
            await asyncio.sleep(rng.uniform(0.02, 0.4))
        finally:
            await stream.aclose()
        received.extend((event.type, event.data) for event in stream.events)
        if stream.last_event_id:  # like a browser's lastEventId: kept until replaced
            last_id = stream.last_event_id
        assert not any(event.type == "gateway-gap" for event in stream.events), received[-3:]
        if done(received):
            return received
        await asyncio.sleep(rng.uniform(0.0, 0.3))
    raise AssertionError("never caught up")


async def run_flaky_clients(
    url: str, count: int, done: Callable[[list[tuple[str, str]]], bool], during: Awaitable[None]
) -> list[list[tuple[str, str]]]:
    ready = asyncio.Semaphore(0)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=10) as client:
        clients = [
            asyncio.create_task(flaky_client(url, seed, done, client, ready))
            for seed in SEEDS[:count]
        ]
        for _ in clients:  # everybody is connected before the first event
            await asyncio.wait_for(ready.acquire(), 10)
        await during
        return await asyncio.wait_for(asyncio.gather(*clients), 60)


async def test_single_topic_random_reconnects_lose_nothing(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    count = 600
    async with GatewayProcess(config(upstream, "/t"), tmp_path=tmp_path) as gateway:
        await open_sse(gateway.url("/t"))  # the instance is live before publishing starts
        await upstream.wait_connections("/t", 1)
        expected = [("message", f"/t {n}") for n in range(1, count + 1)]
        results = await run_flaky_clients(
            gateway.url("/t"),
            len(SEEDS),
            lambda got: bool(got) and got[-1] == expected[-1],
            publish_at_rate(upstream, ["/t"], count),
        )
        for received in results:
            # every client connected before the first publish: the whole sequence
            assert received == expected
        assert len(upstream.connections) == 1


async def test_multiplexed_random_reconnects_lose_nothing(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    count = 300  # per topic: 600 events at 200/s
    async with GatewayProcess(config(upstream, "/a", "/b"), tmp_path=tmp_path) as gateway:
        url = gateway.url("/events?topic=/a&topic=/b")
        await open_sse(url)
        await upstream.wait_connections("/a", 1)
        await upstream.wait_connections("/b", 1)

        def done(got: list[tuple[str, str]]) -> bool:
            return ("/a", f"/a {count}") in got and ("/b", f"/b {count}") in got

        results = await run_flaky_clients(
            url, len(SEEDS), done, publish_at_rate(upstream, ["/a", "/b"], count)
        )
        for received in results:
            for topic in ("/a", "/b"):
                assert [data for kind, data in received if kind == topic] == [
                    f"{topic} {n}" for n in range(1, count + 1)
                ]
            # (across topics there is no order to keep: each has its own upstream)


async def test_upstream_restart_with_resume_loses_nothing(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    count = 600
    upstream.configure("/t", replay=True)  # a backend that honours Last-Event-ID

    async def publish_with_a_restart() -> None:
        publisher = asyncio.create_task(publish_at_rate(upstream, ["/t"], count))
        await asyncio.sleep(1.0)
        await upstream.restart(down_s=0.5)  # events published meanwhile go to its history
        await publisher

    async with GatewayProcess(config(upstream, "/t"), tmp_path=tmp_path) as gateway:
        await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        expected = [("message", f"/t {n}") for n in range(1, count + 1)]
        results = await run_flaky_clients(
            gateway.url("/t"),
            6,
            lambda got: bool(got) and got[-1] == expected[-1],
            publish_with_a_restart(),
        )
        for received in results:
            assert received == expected
        assert len(upstream.connections) >= 2
        assert upstream.connections[-1].last_event_id is not None


async def test_upstream_replaying_what_the_ring_holds_is_not_doubled(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with GatewayProcess(config(upstream, "/t"), tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        for n in range(1, 11):
            upstream.publish("/t", f"e{n}", id=str(n))
        await stream.wait_events(10)
        upstream.kill("/t")
        (second,) = await upstream.wait_connections("/t", 1)
        assert second.last_event_id == "10"
        # a backend that resumes a little early: 6..10 again, then new ones
        for n in range(6, 14):
            upstream.publish("/t", f"e{n}", id=str(n))
        events = await stream.wait_events(13)
        assert [e.data for e in events] == [f"e{n}" for n in range(1, 14)]
        await asyncio.sleep(0.2)
        assert len(stream.events) == 13


@pytest.fixture
async def busy_gateway(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with GatewayProcess(config(upstream, "/t", "/u"), tmp_path=tmp_path) as gateway:
        yield await _make_busy(gateway, upstream)


async def _make_busy(gateway: GatewayProcess, upstream: FakeUpstream) -> GatewayProcess:
    first = await open_sse(gateway.url("/t"))
    await open_sse(gateway.url("/u"))
    await upstream.wait_connections("/t", 1)
    await upstream.wait_connections("/u", 1)
    for n in range(1, 6):
        upstream.publish("/t", f"t{n}", id=str(n))
        upstream.publish("/u", f"u{n}", id=f"u-{n}")
    await first.wait_events(5)
    return gateway


async def first_event(gateway: GatewayProcess, path: str, cursor: bytes) -> SSEStream:
    # bytes, so that a non-UTF-8 cursor reaches the wire as it is
    headers = cast(dict[str, str], {"last-event-id": cursor})
    stream = await open_sse(gateway.url(path), headers=headers)
    assert stream.status == 200
    return stream


@pytest.mark.parametrize(
    ("cursor", "reason"),
    [
        (b"999", "unknown"),  # never seen (or long gone)
        (b"u-3", "unknown"),  # an id of another topic
        (b"~gdeadbeef.3", "foreign"),  # from before a restart, or another process
        (b"x" * 600, "malformed"),  # longer than any id the gateway sends
        (b"\xff\xfe", "malformed"),  # not UTF-8
    ],
)
async def test_bad_cursors_start_live_behind_a_gap_event(
    busy_gateway: GatewayProcess, upstream: FakeUpstream, cursor: bytes, reason: str
) -> None:
    stream = await first_event(busy_gateway, "/t", cursor)
    (gap,) = await stream.wait_events(1)
    assert gap.type == "gateway-gap"
    assert json.loads(gap.data) == {"topic": "/t", "reason": reason}
    assert gap.id == "5"  # a reconnect right now resumes from the newest event
    upstream.publish("/t", "t6", id="6")
    events = await stream.wait_events(2)
    assert (events[1].id, events[1].data) == ("6", "t6")  # no history dumped


async def test_hostile_cursors_never_give_5xx(
    busy_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    hostile = ["", " ", "%00", "~", "~g", "~g.", "~b", "~h" + "A" * 40, "\t5", "5 ", "1e9", "-1"]
    for path in ("/t", "/events?topic=/t&topic=/u"):
        for cursor in hostile:
            status, _, _ = await request(
                busy_gateway.host,
                busy_gateway.port,
                "HEAD",
                path,
                headers=[("last-event-id", cursor)],
            )
            assert status == 200
            sep = "&" if "?" in path else "?"
            stream = await open_sse(busy_gateway.url(f"{path}{sep}last_event_id={quote(cursor)}"))
            assert stream.status == 200
            await stream.aclose()


async def test_last_event_id_query_parameter(
    busy_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    stream = await open_sse(busy_gateway.url("/t?last_event_id=3"))
    events = await stream.wait_events(2)
    assert [e.data for e in events] == ["t4", "t5"]
    # the header wins over the query (a browser's own reconnect keeps the URL)
    stream = await open_sse(busy_gateway.url("/t?last_event_id=1"), headers={"last-event-id": "4"})
    (event,) = await stream.wait_events(1)
    assert event.data == "t5"


async def test_multiplexed_endpoint_contract(busy_gateway: GatewayProcess) -> None:
    gw = busy_gateway
    status, _, body = await request(gw.host, gw.port, "GET", "/events")
    assert (status, body) == (400, b"name at least one topic: /events?topic=/a&topic=/b\n")
    too_many = "&".join(f"topic=/t{n}" for n in range(21))
    status, _, body = await request(gw.host, gw.port, "GET", f"/events?{too_many}")
    assert (status, body) == (400, b"too many topics: 21 (at most 20 per connection)\n")
    status, _, body = await request(gw.host, gw.port, "GET", "/events?topic=/nope")
    assert (status, body) == (404, b"no such topic: /nope\n")
    # the same topic twice is one subscription
    stream = await open_sse(gw.url("/events?topic=/t&topic=/t&last_event_id=~nothing"))
    events = await stream.wait_events(1)
    assert events[0].type == "gateway-gap"


async def test_unsafe_upstream_ids_are_encoded_and_still_resume(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with GatewayProcess(config(upstream, "/t"), tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        unsafe = ["a:b", "x" * 200, "(évé)"]
        for n, event_id in enumerate(unsafe):
            upstream.publish("/t", f"e{n}", id=event_id)
        events = await stream.wait_events(3)
        ids = [e.id for e in events]
        assert ids[0] == "~bYTpi"  # base64url of "a:b"
        assert ids[1].startswith("~h")
        assert len(ids[1]) <= 128
        assert all(0x21 <= ord(c) < 0x7F and c not in '"():<>?@[\\]{}' for i in ids for c in i)
        again = await open_sse(gateway.url("/t"), headers={"last-event-id": ids[0]})
        assert [e.data for e in await again.wait_events(2)] == ["e1", "e2"]
        # and the upstream is resumed with its own id, not ours
        upstream.kill("/t")
        (second,) = await upstream.wait_connections("/t", 1)
        assert second.last_event_id == "(évé)".encode().decode("latin-1")  # UTF-8 on the wire
