"""`make run` as a newcomer sees it: the demo in a real headless Chromium."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import httpx

from tests.support.browser import chromium


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_demo_page_shows_live_events_in_chromium(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--port", str(port), stdout=log, stderr=log
    )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{port}/")
            for path in ("/clock", "/ticker", "/orders/42"):
                panel = page.locator(f'section[data-path="{path}"]')
                await panel.locator("li.event").first.wait_for(timeout=15000)
                assert await panel.locator(".state").text_content() == "open"
            clock_events = page.locator('section[data-path="/clock"] li.event')
            first = await clock_events.count()
            await page.wait_for_function(
                f"document.querySelectorAll('section[data-path=\"/clock\"] li.event').length"
                f" > {first}",
                timeout=5000,
            )
            text = await page.locator(
                'section[data-path="/orders/42"] li.event'
            ).first.text_content()
            assert text is not None
            assert '"order": "42"' in text
            await page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
        log.close()
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert "open http://127.0.0.1:" in (tmp_path / "demo.log").read_text()
