"""Hot reload: unchanged topics keep every client and lose nothing, removed
topics end their streams, changed upstreams re-subscribe under the same
clients, added topics appear."""

from __future__ import annotations

import asyncio
import hashlib
import json

from gateway.config import parse_config
from tests.support.clients import open_sse, request
from tests.support.inprocess import serve_inprocess
from tests.support.upstream import FakeUpstream


def topics_yaml(upstream: FakeUpstream, topics: dict[str, str]) -> str:
    lines = ["topics:"]
    for path, upstream_path in topics.items():
        url = upstream.url(upstream_path)
        lines.append(f"  - {{name: {path.strip('/')}, path: {path}, upstream: '{url}'}}")
    return "\n".join(lines) + "\n"


async def test_reload_applies_changes_and_keeps_the_rest(upstream: FakeUpstream) -> None:
    before = {"/t": "/t", "/u": "/u", "/v": "/v1"}
    after = {"/t": "/t", "/v": "/v2", "/w": "/w"}
    async with serve_inprocess(topics_yaml(upstream, before)) as (app, port):
        base = f"http://127.0.0.1:{port}"
        t, u, v = [await open_sse(f"{base}{path}") for path in ("/t", "/u", "/v")]
        mux = await open_sse(f"{base}/events?topic=/t&topic=/u")
        for path in ("/t", "/u", "/v1"):
            await upstream.wait_connections(path, 1)
        upstream.publish("/t", "t1", id="1")
        upstream.publish("/v1", "v1", id="v-1")
        await t.wait_events(1)
        await v.wait_events(1)

        await app.reload(parse_config(topics_yaml(upstream, after)))

        # removed: the single-topic stream ends with a retry, the mux one is told
        await u.wait_closed(timeout=5)
        assert u.raw.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"retry: ")
        gap = next(e for e in await mux.wait_events(2) if e.type == "gateway-gap")
        assert json.loads(gap.data) == {"topic": "/u", "reason": "removed"}
        await upstream.wait_closed("/u")
        closed = app.metrics.render()[0]
        assert b'sse_gateway_streams_closed_total{reason="topic_closed"} 1.0' in closed
        # changed upstream: re-subscribed, resuming from the last id, same client
        (moved,) = await upstream.wait_connections("/v2", 1)
        assert moved.last_event_id == "v-1"
        await upstream.wait_closed("/v1")
        upstream.publish("/v2", "v2", id="v-2")
        assert [e.data for e in await v.wait_events(2)] == ["v1", "v2"]
        # unchanged: same upstream connection, nothing lost
        upstream.publish("/t", "t2", id="2")
        assert [e.data for e in await t.wait_events(2)] == ["t1", "t2"]
        assert len([c for c in upstream.connections if c.path == "/t"]) == 1
        assert not t.closed
        assert not v.closed
        assert not mux.closed
        # added
        w = await open_sse(f"{base}/w")
        await upstream.wait_connections("/w", 1)
        upstream.publish("/w", "w1", id="1")
        assert [e.data for e in await w.wait_events(1)] == ["w1"]
        # and the removed path is gone for new clients
        gone = await open_sse(f"{base}/u")
        assert gone.status == 404


async def test_reload_swaps_auth_tokens_and_limits(upstream: FakeUpstream) -> None:
    def config(token: str, per_ip: int) -> str:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return (
            f"auth: {{tokens: [{{sha256: '{digest}', subject: s, topics: [t]}}]}}\n"
            f"limits: {{max_connections_per_ip: {per_ip}}}\n"
            f"topics: [{{name: t, path: /t, upstream: '{upstream.url('/t')}'}}]\n"
        )

    old, new = "old-token-0123456789", "new-token-0123456789"
    async with serve_inprocess(config(old, 5)) as (app, port):
        base = f"http://127.0.0.1:{port}/t"
        kept = await open_sse(f"{base}?token={old}")
        assert kept.status == 200
        await app.reload(parse_config(config(new, 1)))
        assert (await request("127.0.0.1", port, "GET", f"/t?token={old}"))[0] == 401
        # the new token is accepted, but the new per-IP limit (1) is already used
        # by the stream admitted before the reload, which goes on
        over = await open_sse(f"{base}?token={new}")
        await over.wait_closed(timeout=5)
        assert over.raw.startswith(b": overloaded\n")
        assert not kept.closed
        await kept.aclose()
        await asyncio.sleep(0.1)
        fresh = await open_sse(f"{base}?token={new}")
        await fresh.wait_bytes(b"id: ")
        assert not fresh.closed
