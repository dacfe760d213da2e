"""End to end: a real gateway process between a fake upstream the test drives
and real HTTP clients. One upstream connection per topic instance, whatever the
number of clients; nothing partial, nothing out of order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.support.clients import open_sse
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream


def gateway_config(topics: list[dict[str, Any]], **stream: Any) -> dict[str, Any]:
    return {"stream": stream, "topics": topics}


async def test_200_clients_share_one_upstream_connection(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = gateway_config([{"name": "t", "path": "/t", "upstream": upstream.url("/t")}])
    async with (
        GatewayProcess(config, tmp_path=tmp_path) as gateway,
        httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=10) as client,
    ):
        streams = await asyncio.gather(
            *(open_sse(gateway.url("/t"), client=client) for _ in range(200))
        )
        await upstream.wait_connections("/t", 1)
        for n in range(1, 21):
            upstream.publish("/t", f"event {n}", id=str(n))
        for stream in streams:
            events = await stream.wait_events(20)
            assert [(e.id, e.data) for e in events] == [
                (str(n), f"event {n}") for n in range(1, 21)
            ]
        assert len(upstream.connections) == 1
        assert all(stream.status == 200 for stream in streams)
        await asyncio.gather(*(stream.aclose() for stream in streams))


async def test_templated_topic_one_upstream_per_instance(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = gateway_config(
        [
            {
                "name": "orders",
                "path": "/orders/{order_id}",
                "upstream": upstream.url("/o/{order_id}"),
            }
        ]
    )
    async with (
        GatewayProcess(config, tmp_path=tmp_path) as gateway,
        httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=10) as client,
    ):
        streams = await asyncio.gather(
            *(open_sse(gateway.url(f"/orders/{n % 20}"), client=client) for n in range(200))
        )
        for order in range(20):
            await upstream.wait_connections(f"/o/{order}", 1)
        assert len(upstream.open_connections()) == 20
        assert len(upstream.connections) == 20
        for order in range(20):
            upstream.publish(f"/o/{order}", f"order {order}", id=f"{order}-1")
        for n, stream in enumerate(streams):
            (event,) = await stream.wait_events(1)
            assert (event.id, event.data) == (f"{n % 20}-1", f"order {n % 20}")
        await asyncio.gather(*(stream.aclose() for stream in streams))


async def test_upstream_released_after_linger(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = gateway_config(
        [{"name": "t", "path": "/t", "upstream": upstream.url("/t"), "linger_s": 1.0}]
    )
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        await stream.aclose()
        # a client that returns within the linger finds the same subscription
        again = await open_sse(gateway.url("/t"))
        upstream.publish("/t", "still here", id="1")
        (event,) = await again.wait_events(1)
        assert event.data == "still here"
        assert len(upstream.connections) == 1
        await again.aclose()
        await upstream.wait_closed("/t", timeout=10)
        assert len(upstream.connections) == 1


async def test_upstream_killed_mid_event_then_restarted(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = gateway_config([{"name": "t", "path": "/t", "upstream": upstream.url("/t")}])
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        streams = [await open_sse(gateway.url("/t")) for _ in range(3)]
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "one", id="1")
        upstream.publish("/t", "two", id="2")
        for stream in streams:
            await stream.wait_events(2)
        upstream.kill("/t", partial=b"id: 3\ndata: half of thr")
        await upstream.restart(down_s=0.3)
        (second,) = (await upstream.wait_connections("/t", 1))[-1:]
        assert second.last_event_id == "2"
        upstream.publish("/t", "three", id="3")
        upstream.publish("/t", "four", id="4")
        for stream in streams:
            events = await stream.wait_events(4)
            assert [(e.id, e.data) for e in events] == [
                ("1", "one"),
                ("2", "two"),
                ("3", "three"),
                ("4", "four"),
            ]
            assert b"half" not in stream.raw
            assert not stream.closed


async def test_stalled_upstream_is_replaced_while_clients_get_heartbeats(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = {
        "stream": {"heartbeat_s": 1.0},
        "upstream": {"stall_timeout_s": 1.5, "backoff_initial_ms": 50, "backoff_max_ms": 100},
        "topics": [{"name": "t", "path": "/t", "upstream": upstream.url("/t")}],
    }
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        stream = await open_sse(gateway.url("/t"))
        await upstream.wait_connections("/t", 1)
        upstream.stall("/t")
        await stream.wait_bytes(b":\n\n", timeout=5)  # a heartbeat
        # the stalled connection is dropped and a new one made
        await upstream.wait_closed("/t", timeout=10)
        upstream.unstall("/t")
        await upstream.wait_connections("/t", 1)
        assert len(upstream.connections) >= 2
        upstream.publish("/t", "after the stall", id="9")
        (event,) = await stream.wait_events(1)
        assert event.data == "after the stall"
        assert not stream.closed


async def test_non_200_and_wrong_content_type_are_retried(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.configure("/bad", status=503, body=b"down")
    upstream.configure("/html", content_type="text/html")
    config = {
        "upstream": {"backoff_initial_ms": 50, "backoff_max_ms": 200},
        "topics": [
            {"name": "bad", "path": "/bad", "upstream": upstream.url("/bad")},
            {"name": "html", "path": "/html", "upstream": upstream.url("/html")},
        ],
    }
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        bad = await open_sse(gateway.url("/bad"))
        html = await open_sse(gateway.url("/html"))
        for _ in range(50):
            tried = [c.path for c in upstream.connections]
            if tried.count("/bad") >= 3 and tried.count("/html") >= 3:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"not retried: {tried}")
        assert not bad.closed
        assert not html.closed
        assert bad.status == 200
        upstream.configure("/bad")
        await upstream.wait_connections("/bad", 1)
        upstream.publish("/bad", "recovered", id="1")
        (event,) = await bad.wait_events(1)
        assert event.data == "recovered"
        log = gateway.log_text()
        assert "status" in log
        assert "content_type" in log
