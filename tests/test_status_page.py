"""The status page renders in headless Chromium and updates live over SSE."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.browser import chromium
from tests.support.clients import open_sse
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream


async def test_status_stream_and_page(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = {
        "topics": [
            {"name": "orders", "path": "/orders/{id}", "upstream": upstream.url("/o/{id}")},
        ]
    }
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        clients = [await open_sse(gateway.url(f"/orders/{n % 2}")) for n in range(3)]
        await upstream.wait_connections("/o/0", 1)
        await upstream.wait_connections("/o/1", 1)
        upstream.publish("/o/0", "x", id="7")
        await clients[0].wait_events(1)

        feed = await open_sse(gateway.url("/_gateway/status/stream"))
        (first,) = await feed.wait_events(1)
        assert first.type == "status"
        snapshot = json.loads(first.data)
        assert snapshot["topic_instances"] == 2
        assert snapshot["subscribers"] == 3
        by_path = {topic["path"]: topic for topic in snapshot["topics"]}
        assert by_path["/orders/0"]["subscribers"] == 2
        assert by_path["/orders/0"]["events"] == 1
        assert by_path["/orders/0"]["upstream"]["state"] == "open"
        assert by_path["/orders/0"]["upstream"]["last_event_id"] == "7"
        assert 0 <= by_path["/orders/0"]["lag_ms"] < 1000
        await feed.wait_events(2, timeout=5)  # it keeps coming, once a second

        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(gateway.url("/status"))
            row = page.locator('tr.topic[data-path="/orders/0"]')
            await row.wait_for(timeout=10000)
            assert await row.locator("td.subscribers").text_content() == "2"
            upstream.publish("/o/0", "y", id="8")
            await page.wait_for_function(
                "document.querySelector('tr.topic[data-path=\"/orders/0\"] td.events')"
                ".textContent === '2'",
                timeout=10000,
            )
            await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
        assert (tmp_path / "status.png").stat().st_size > 1000
