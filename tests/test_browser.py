"""The edge proven in headless Chromium: EventSource over HTTPS with HTTP/2 (20 streams on one
connection), the HTTP/1.1 six-connection limit and the multiplexed endpoint that avoids it,
reconnects with Last-Event-ID after a dropped connection and after a restart, and heartbeats
that keep an idle stream open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from tests.support.browser import chromium
from tests.support.edge import Certificates, TCPProxy, TLSGatewayProcess
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

TOPICS = 20

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>sse-gateway edge test</title>
<script>
window.sources = {};
window.log = {};      // name -> [{type, id, data}]
window.opens = {};
window.errors = {};
function openSource(name, url, types) {
  const source = new EventSource(url);
  sources[name] = source;
  log[name] = [];
  opens[name] = 0;
  errors[name] = 0;
  const record = (e) => log[name].push({type: e.type, id: e.lastEventId, data: e.data});
  source.onmessage = record;
  for (const type of [...(types || []), "gateway-gap"]) source.addEventListener(type, record);
  source.onopen = () => { opens[name] += 1; };
  source.onerror = () => { errors[name] += 1; };
}
</script>
<p>edge test page</p>
"""


@pytest.fixture
def page_file(tmp_path: Path) -> Path:
    path = tmp_path / "index.html"
    path.write_text(PAGE)
    return path


def config(upstream: FakeUpstream, page_file: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"index_file": str(page_file), **server},
        "stream": {"retry_min_ms": 200, "retry_max_ms": 400},
        "topics": [
            {"name": "t", "path": "/t", "upstream": upstream.url("/t")},
            {"name": "s", "path": "/s/{n}", "upstream": upstream.url("/u/{n}")},
        ],
    }


def tls_gateway(
    upstream: FakeUpstream, page_file: Path, tmp_path: Path, **stream: Any
) -> TLSGatewayProcess:
    """The gateway on HTTPS (ALPN h2) with a fresh test CA, serving the page."""
    certs = Certificates.issue(tmp_path / "tls")
    tls = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}
    settings = config(upstream, page_file, tls=tls)
    settings["stream"].update(stream)
    return TLSGatewayProcess(settings, tmp_path=tmp_path, client_context=certs.client_context())


@asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Page, list[dict[str, Any]]]]:
    """A page in a fresh Chromium, and the CDP Network.responseReceived events it causes."""
    async with chromium() as browser:
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        responses: list[dict[str, Any]] = []

        def on_response(params: dict[str, Any]) -> None:
            responses.append(params)

        cdp.on("Network.responseReceived", on_response)
        await cdp.send("Network.enable")
        try:
            yield page, responses
        finally:
            await context.close()


async def wait_js(page: Page, expression: str, timeout_s: float = 15) -> None:
    await page.wait_for_function(expression, timeout=timeout_s * 1000, polling=50)


async def events(page: Page, name: str) -> list[dict[str, str]]:
    result: list[dict[str, str]] = await page.evaluate(f"log[{json.dumps(name)}]")
    return result


def event_source_responses(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One response per EventSource request (CDP may report a request more than once)."""
    unique = {r["requestId"]: r["response"] for r in responses if r.get("type") == "EventSource"}
    return list(unique.values())


async def test_https_h2_page_opens_20_event_sources_on_one_connection(
    upstream: FakeUpstream, tmp_path: Path, page_file: Path
) -> None:
    gateway = tls_gateway(upstream, page_file, tmp_path)
    await gateway.start()
    try:
        async with browser_page() as (page, responses):
            await page.goto(gateway.url("/"))
            protocol = await page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            assert protocol == "h2"
            await page.evaluate(
                f"for (let n = 0; n < {TOPICS}; n++) openSource('s' + n, '/s/' + n)"
            )
            await wait_js(page, "Object.values(sources).every((s) => s.readyState === 1)")
            for n in range(TOPICS):
                await upstream.wait_connections(f"/u/{n}", 1)
            for n in range(TOPICS):
                upstream.publish(f"/u/{n}", f"hello {n}", id=f"{n}-1")
            await wait_js(page, "Object.values(log).every((l) => l.length === 1)")
            for n in range(TOPICS):
                assert await events(page, f"s{n}") == [
                    {"type": "message", "id": f"{n}-1", "data": f"hello {n}"}
                ]
            streams = event_source_responses(responses)
            assert len(streams) == TOPICS
            assert {r["protocol"] for r in streams} == {"h2"}
            assert len({r["connectionId"] for r in streams}) == 1  # all multiplexed
            assert await page.evaluate("Object.values(errors).every((n) => n === 0)")
    finally:
        await gateway.stop()


async def test_http11_page_hits_the_six_connection_limit_and_mux_avoids_it(
    upstream: FakeUpstream, tmp_path: Path, page_file: Path
) -> None:
    gateway = GatewayProcess(config(upstream, page_file), tmp_path=tmp_path)
    await gateway.start()
    try:
        async with browser_page() as (page, responses):
            await page.goto(gateway.url("/"))
            protocol = await page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            assert protocol == "http/1.1"
            await page.evaluate("for (let n = 0; n < 7; n++) openSource('s' + n, '/s/' + n)")
            await wait_js(page, "[0,1,2,3,4,5].every((n) => sources['s' + n].readyState === 1)")
            for n in range(6):
                await upstream.wait_connections(f"/u/{n}", 1)
                upstream.publish(f"/u/{n}", f"hello {n}", id="1")
            await wait_js(page, "[0,1,2,3,4,5].every((n) => log['s' + n].length === 1)")
            await asyncio.sleep(3)  # the 7th gets nothing in this time: no connection for it
            assert await page.evaluate("sources.s6.readyState") == 0
            assert await events(page, "s6") == []
            assert not [c for c in upstream.connections if c.path == "/u/6"]
            # Free one connection: the 7th goes through on it.
            await page.evaluate("sources.s0.close()")
            await wait_js(page, "sources.s6.readyState === 1")
            await upstream.wait_connections("/u/6", 1)
            h1 = event_source_responses(responses)
            assert {r["protocol"] for r in h1} == {"http/1.1"}
            assert len(h1) == 7
            assert len({r["connectionId"] for r in h1[:6]}) == 6  # one connection each

            # The multiplexed endpoint: 20 topics, one request, one connection.
            await page.evaluate("Object.values(sources).forEach((s) => s.close())")
            query = "&".join(f"topic=/s/{n}" for n in range(TOPICS))
            types = [f"/s/{n}" for n in range(TOPICS)]
            await page.evaluate(f"openSource('mux', '/events?{query}', {json.dumps(types)})")
            await wait_js(page, "sources.mux.readyState === 1")
            for n in range(TOPICS):
                await upstream.wait_connections(f"/u/{n}", 1)
            for n in range(TOPICS):
                upstream.publish(f"/u/{n}", f"mux {n}", id="2")
            await wait_js(page, f"log.mux.length === {TOPICS}")
            got = await events(page, "mux")
            assert sorted((e["type"], e["data"]) for e in got) == sorted(
                (f"/s/{n}", f"mux {n}") for n in range(TOPICS)
            )
            assert len(event_source_responses(responses)) == 7 + 1
    finally:
        await gateway.stop()


async def test_a_dropped_connection_resumes_with_the_exact_sequence(
    upstream: FakeUpstream, tmp_path: Path, page_file: Path
) -> None:
    gateway = tls_gateway(upstream, page_file, tmp_path)
    await gateway.start()
    proxy = TCPProxy(gateway.host, gateway.port)
    await proxy.start()
    try:
        async with browser_page() as (page, responses):
            await page.goto(f"https://127.0.0.1:{proxy.port}/")
            await page.evaluate("openSource('t', '/t')")
            await wait_js(page, "sources.t.readyState === 1")
            await upstream.wait_connections("/t", 1)
            for i in range(1, 31):
                upstream.publish("/t", f"event {i}", id=str(i))
            await wait_js(page, "log.t.length === 30")

            assert proxy.drop_all() >= 1  # the network fails under the open stream
            for i in range(31, 61):  # published while the browser is away
                upstream.publish("/t", f"event {i}", id=str(i))
            await wait_js(page, "opens.t === 2 && errors.t >= 1")
            for i in range(61, 91):
                upstream.publish("/t", f"event {i}", id=str(i))
            await wait_js(page, "log.t.length >= 90")
            await asyncio.sleep(0.3)  # anything doubled would arrive about now
            got = await events(page, "t")
            assert got == [
                {"type": "message", "id": str(i), "data": f"event {i}"} for i in range(1, 91)
            ]
            assert {r["protocol"] for r in event_source_responses(responses)} == {"h2"}
    finally:
        await proxy.stop()
        await gateway.stop()


async def test_a_restarted_gateway_resumes_or_says_gap(
    upstream: FakeUpstream, tmp_path: Path, page_file: Path
) -> None:
    """A restarted gateway has empty rings and a new epoch: the browser's Last-Event-ID is
    unknown to it. What it promises: the full sequence, or a gateway-gap event followed by
    the live sequence, never a silent hole and never a duplicate."""
    upstream.configure("/t", replay=True)
    gateway = GatewayProcess(config(upstream, page_file), tmp_path=tmp_path)
    await gateway.start()
    try:
        async with browser_page() as (page, _):
            await page.goto(gateway.url("/"))
            await page.evaluate("openSource('t', '/t')")
            await wait_js(page, "sources.t.readyState === 1")
            await upstream.wait_connections("/t", 1)
            for i in range(1, 21):
                upstream.publish("/t", f"event {i}", id=str(i))
            await wait_js(page, "log.t.length === 20")

            await gateway.stop()
            for i in range(21, 31):  # nobody holds these for the browser
                upstream.publish("/t", f"event {i}", id=str(i))
            await gateway.start()
            await wait_js(page, "opens.t >= 2 && sources.t.readyState === 1", timeout_s=20)
            await upstream.wait_connections("/t", 1)
            for i in range(31, 51):
                upstream.publish("/t", f"event {i}", id=str(i))
            await wait_js(page, "log.t.length > 0 && log.t[log.t.length - 1].id === '50'")
            await asyncio.sleep(0.3)
            got = await events(page, "t")
    finally:
        await gateway.stop()

    print("after the restart:", [e["id"] if e["type"] == "message" else e for e in got[19:]])
    messages = [e for e in got if e["type"] == "message"]
    ids = [int(e["id"]) for e in messages]
    assert ids[:20] == list(range(1, 21))
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids == sorted(ids)
    assert set(range(31, 51)) <= set(ids), "an event published after the reconnect is missing"
    gaps = [i for i, e in enumerate(got) if e["type"] == "gateway-gap"]
    if ids != list(range(1, 51)):
        assert len(gaps) == 1, got
        assert got[gaps[0] - 1]["id"] == "20"  # the gap is signalled where the hole is
        after = [int(e["id"]) for e in got[gaps[0] + 1 :]]
        assert after == list(range(after[0], 51))
        assert json.loads(got[gaps[0]]["data"])["topic"] == "/t"


async def test_heartbeats_keep_an_idle_stream_open(
    upstream: FakeUpstream, tmp_path: Path, page_file: Path
) -> None:
    gateway = tls_gateway(upstream, page_file, tmp_path, heartbeat_s=5.0)
    await gateway.start()
    proxy = TCPProxy(gateway.host, gateway.port)
    await proxy.start()
    try:
        async with browser_page() as (page, _):
            await page.goto(f"https://127.0.0.1:{proxy.port}/")
            await page.evaluate("openSource('t', '/t')")
            await wait_js(page, "sources.t.readyState === 1")
            await upstream.wait_connections("/t", 1)
            upstream.publish("/t", "before", id="1")
            await wait_js(page, "log.t.length === 1")
            connections, before = proxy.accepted, proxy.bytes_down

            await asyncio.sleep(30)  # no events at all

            # Heartbeats flowed (5 s, jittered: at least 4 in 30 s, each a TLS record).
            assert proxy.bytes_down - before >= 4 * 30
            assert await page.evaluate("[sources.t.readyState, opens.t, errors.t]") == [1, 1, 0]
            upstream.publish("/t", "after 30 s idle", id="2")
            await wait_js(page, "log.t.length === 2")
            assert (await events(page, "t"))[1]["data"] == "after 30 s idle"
            assert await page.evaluate("[opens.t, errors.t]") == [1, 0]
            assert proxy.accepted == connections  # the same connection throughout
    finally:
        await proxy.stop()
        await gateway.stop()
