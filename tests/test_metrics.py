"""/metrics reports what happened, with bounded labels."""

from __future__ import annotations

import asyncio
import re

from tests.support.clients import RawSSEClient, open_sse, request
from tests.support.inprocess import serve_inprocess
from tests.support.upstream import FakeUpstream


def value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    assert match, f"{name}{{{labels}}} not in metrics"
    return float(match.group(1))


async def test_metrics_count_fanout_resumes_and_upstreams(upstream: FakeUpstream) -> None:
    config = (
        "stream: {queue_max_bytes: 300000}\n"
        "topics:\n"
        f"  - {{name: orders, path: '/orders/{{id}}', upstream: '{upstream.url('/o/{id}')}'}}\n"
    )
    async with serve_inprocess(config) as (_, port):
        base = f"http://127.0.0.1:{port}"
        streams = [await open_sse(f"{base}/orders/{n % 2}") for n in range(4)]
        await upstream.wait_connections("/o/0", 1)
        await upstream.wait_connections("/o/1", 1)
        for n in range(3):
            upstream.publish("/o/0", f"a{n}", id=f"a{n}")
            upstream.publish("/o/1", f"b{n}", id=f"b{n}")
        for stream in streams:
            await stream.wait_events(3)
        resumed = await open_sse(f"{base}/orders/0", headers={"last-event-id": "a0"})
        await resumed.wait_events(2)
        gapped = await open_sse(f"{base}/orders/0", headers={"last-event-id": "zzz"})
        await gapped.wait_events(1)
        slow = await RawSSEClient.connect("127.0.0.1", port, "/orders/1", rcvbuf=4096)
        slow.pause()
        for n in range(600):
            upstream.publish("/o/1", "x" * 8000, id=f"big{n}")
            if n % 10 == 0:
                await asyncio.sleep(0)
        await streams[1].wait_events(603, timeout=20)

        status, headers, body = await request("127.0.0.1", port, "GET", "/metrics")
        text = body.decode()
        assert status == 200
        assert dict(headers)["content-type"].startswith("text/plain")
        # one label per topic name, whatever the number of instances
        assert value(text, "sse_gateway_events_in_total", 'topic="orders"') == 606
        assert value(text, "sse_gateway_subscribers", 'topic="orders"') == 6  # the slow one left
        assert value(text, "sse_gateway_connections", 'protocol="HTTP/1.1"') == 6
        assert value(text, "sse_gateway_resumes_total", 'outcome="replayed"') == 1
        assert value(text, "sse_gateway_resumes_total", 'outcome="gap_unknown"') == 1
        assert value(text, "sse_gateway_replayed_events_total") == 2
        assert value(text, "sse_gateway_upstream_instances", 'state="open",topic="orders"') == 2
        assert value(text, "sse_gateway_streams_closed_total", 'reason="slow_consumer"') == 1
        assert value(text, "sse_gateway_delivery_lag_seconds_count") > 0
        assert 'topic="/orders' not in text  # instance paths never become labels
        await slow.close()


async def test_admin_token_and_networks_guard_metrics_and_status(upstream: FakeUpstream) -> None:
    token = "admin-token-0123456789"
    config = (
        f"admin: {{token: {token}}}\n"
        f"topics: [{{name: t, path: /t, upstream: '{upstream.url('/t')}'}}]\n"
    )
    async with serve_inprocess(config) as (_, port):
        for path in ("/metrics", "/status", "/_gateway/status/stream"):
            status, _, _ = await request("127.0.0.1", port, "HEAD", path)
            assert status == 401
            bad = [("authorization", "Bearer wrong-token-000000")]
            assert (await request("127.0.0.1", port, "HEAD", path, headers=bad))[0] == 401
        good = [("authorization", f"Bearer {token}")]
        assert (await request("127.0.0.1", port, "GET", "/metrics", headers=good))[0] == 200
        assert (await request("127.0.0.1", port, "GET", f"/status?token={token}"))[0] == 200
        stream = await open_sse(f"http://127.0.0.1:{port}/_gateway/status/stream?token={token}")
        assert stream.status == 200
        await stream.aclose()
        assert (await request("127.0.0.1", port, "GET", "/healthz"))[0] == 200  # never guarded
    config = (
        "admin: {allow: [10.0.0.0/8]}\n"
        f"topics: [{{name: t, path: /t, upstream: '{upstream.url('/t')}'}}]\n"
    )
    async with serve_inprocess(config) as (_, port):
        assert (await request("127.0.0.1", port, "GET", "/metrics"))[0] == 404
        assert (await request("127.0.0.1", port, "GET", "/status"))[0] == 404
