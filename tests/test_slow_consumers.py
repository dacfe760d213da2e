"""A client that stops reading never holds back the others, and each
slow-consumer policy does what it says."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from tests.support.clients import RawSSEClient, open_sse
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

EVENTS = 400
PAYLOAD = "x" * 16000  # big events fill socket buffers quickly


def config(upstream: FakeUpstream, policy: str, **stream: Any) -> dict[str, Any]:
    return {
        "stream": {"queue_max_events": 20, "send_timeout_s": 5.0, **stream},
        "topics": [
            {"name": "t", "path": "/t", "upstream": upstream.url("/t"), "policy": policy},
        ],
    }


async def ended(client: RawSSEClient, timeout: float = 15.0) -> bool:
    """Read until the server ends the connection (EOF or reset)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await client.read_body(timeout=1.0)
        except (ConnectionError, OSError):
            return True
        if client.eof:
            return True
    return False


def ids_in(raw: bytes) -> list[int]:
    return [
        int(line[4:])
        for line in raw.split(b"\n")
        if line.startswith(b"id: ") and line[4:].isdigit()
    ]


async def read_until_id(client: RawSSEClient, last: int) -> list[int]:
    raw = bytearray()
    while not ids_in(bytes(raw)) or ids_in(bytes(raw))[-1] != last:
        chunk = await client.read_body(timeout=2)
        assert chunk or not client.eof, "stream ended early"
        raw += chunk
    return ids_in(bytes(raw))


async def publish_burst(upstream: FakeUpstream) -> None:
    for n in range(1, EVENTS + 1):
        upstream.publish("/t", f"{n} {PAYLOAD}", id=str(n))
        if n % 50 == 0:
            await asyncio.sleep(0)


async def test_disconnect_policy_cuts_the_slow_client_only(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with GatewayProcess(config(upstream, "disconnect"), tmp_path=tmp_path) as gateway:
        slow = await RawSSEClient.connect(gateway.host, gateway.port, "/t", rcvbuf=4096)
        healthy = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        slow.pause()
        started = time.monotonic()
        await publish_burst(upstream)
        events = await healthy.wait_events(EVENTS, timeout=30)
        elapsed = time.monotonic() - started
        assert [int(e.id) for e in events] == list(range(1, EVENTS + 1))
        # not held back by the slow client's send deadline (5 s)
        assert elapsed < 4.0
        assert await ended(slow)
        assert not healthy.closed


async def test_blocked_send_hits_the_deadline(upstream: FakeUpstream, tmp_path: Path) -> None:
    # drop_oldest never overflows into a disconnect: only the deadline can cut it
    cfg = config(upstream, "drop_oldest", send_timeout_s=2.0)
    async with GatewayProcess(cfg, tmp_path=tmp_path) as gateway:
        slow = await RawSSEClient.connect(gateway.host, gateway.port, "/t", rcvbuf=4096)
        healthy = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        slow.pause()
        await publish_burst(upstream)
        await healthy.wait_events(EVENTS, timeout=30)
        await asyncio.sleep(3.5)  # past the deadline (2 s) plus a housekeeping tick
        assert await ended(slow, timeout=15), gateway.log_text()[-3000:]


async def test_drop_oldest_delivers_the_newest_in_order(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    cfg = config(upstream, "drop_oldest", send_timeout_s=60.0)
    async with GatewayProcess(cfg, tmp_path=tmp_path) as gateway:
        slow = await RawSSEClient.connect(gateway.host, gateway.port, "/t", rcvbuf=4096)
        await upstream.wait_connections("/t", 1)
        slow.pause()
        await publish_burst(upstream)
        await asyncio.sleep(0.5)
        ids = await read_until_id(slow, EVENTS)
        assert ids == sorted(set(ids))
        assert len(ids) < EVENTS  # the oldest were dropped
        # what the queue (20 events) held when the burst ended: the newest 20
        assert ids[-20:] == list(range(EVENTS - 19, EVENTS + 1))
        await slow.close()


async def test_latest_keeps_only_the_newest(upstream: FakeUpstream, tmp_path: Path) -> None:
    cfg = config(upstream, "latest", send_timeout_s=60.0)
    async with GatewayProcess(cfg, tmp_path=tmp_path) as gateway:
        slow = await RawSSEClient.connect(gateway.host, gateway.port, "/t", rcvbuf=4096)
        await upstream.wait_connections("/t", 1)
        slow.pause()
        await publish_burst(upstream)
        await asyncio.sleep(0.5)
        ids = await read_until_id(slow, EVENTS)
        assert ids == sorted(set(ids))
        assert len(ids) < EVENTS
        # the socket buffers take what they can, but whenever a send waits, only
        # the newest event waits behind it: gaps of more than one event appear
        assert any(b - a > 1 for a, b in itertools.pairwise(ids))
        await slow.close()
