"""The downstream HTTP contract, byte for byte: headers, first bytes, errors,
HTTP/2 (h2c), and the CLI's refusal of bad config."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.clients import RawSSEClient, open_sse, request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream, frame_chunk


@pytest.fixture
async def gateway(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    config = {
        "stream": {"retry_min_ms": 2000, "retry_max_ms": 4000},
        "topics": [
            {"name": "t", "path": "/t", "upstream": upstream.url("/t")},
            {"name": "o", "path": "/orders/{id}", "upstream": upstream.url("/o/{id}")},
        ],
    }
    process = GatewayProcess(config, tmp_path=tmp_path)
    await process.start()
    yield process
    await process.stop()


async def test_stream_headers_and_first_bytes_on_http11(gateway: GatewayProcess) -> None:
    client = await RawSSEClient.connect(gateway.host, gateway.port, "/t")
    try:
        assert client.status == 200
        headers = {name.lower(): value for name, value in client.headers}
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache, no-transform"
        assert headers["x-accel-buffering"] == "no"
        assert headers["connection"] == "keep-alive"
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert "content-encoding" not in headers
        body = await client.read_until(b"\n\n\r\n", timeout=5)
        # a comment (so `open` fires), a jittered retry, and the position to
        # resume from should the client reconnect before any event arrives
        match = re.fullmatch(
            rb"[0-9a-f]+\r\n: ok\nretry: (\d+)\n\nid: ~g[0-9a-f]{8}\.0\n\n\r\n", bytes(body)
        )
        assert match, body
        assert 2000 <= int(match.group(1)) <= 4000
    finally:
        await client.close()


async def test_events_of_one_upstream_socket_read_reach_the_client_in_one_chunk(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    client = await RawSSEClient.connect(gateway.host, gateway.port, "/t")
    try:
        await client.read_until(b"\n\n\r\n", timeout=5)  # ": ok", retry, position
        await upstream.wait_connections("/t", 1)
        # one TCP write: three HTTP chunks, an event split across two of them
        blocks = [b"id: 1\ndata: a\n\nid: 2\nev", b"ent: x\ndata: b\n\n", b": c\nid: 3\n\n"]
        upstream.send_raw("/t", b"".join(map(frame_chunk, blocks)), framed=False)
        body = await client.read_until(b"id: 3\n\n\r\n", timeout=5)
        batch = b"id: 1\ndata: a\n\nid: 2\nevent: x\ndata: b\n\nid: 3\n\n"
        assert body == b"%x\r\n%b\r\n" % (len(batch), batch)
    finally:
        await client.close()


async def test_a_client_that_leaves_is_noticed_at_once(gateway: GatewayProcess) -> None:
    """No event and no heartbeat is due: only ``http.disconnect`` can end the
    stream (under hypercorn it arrives as a callback, with no task waiting)."""

    def closed() -> list[str]:
        return [line for line in gateway.log_text().splitlines() if "stream closed" in line]

    client = await RawSSEClient.connect(gateway.host, gateway.port, "/t")
    await client.read_until(b"\n\n\r\n", timeout=5)
    await client.close()
    await gateway.wait_log("stream closed", timeout=3)
    (line,) = closed()
    assert "protocol=HTTP/1.1" in line
    assert "reason=client_gone" in line

    async with httpx.AsyncClient(http1=False, http2=True, timeout=5) as h2:
        stream = await open_sse(gateway.url("/t"), client=h2)
        await stream.aclose()
    # the client closed its connection (tests/test_hyperglue_lean.py: a reset stream)
    async with asyncio.timeout(3):
        while len(closed()) < 2:  # noqa: ASYNC110 (a log file gives nothing to await)
            await asyncio.sleep(0.05)
    line = closed()[1]
    assert "protocol=HTTP/2" in line
    assert "reason=client_gone" in line


async def test_retry_is_jittered_per_connection(gateway: GatewayProcess) -> None:
    retries = set()
    for _ in range(8):
        stream = await open_sse(gateway.url("/t"))
        await stream.wait_bytes(b"retry:", timeout=5)
        assert stream.retry is not None
        retries.add(stream.retry)
        await stream.aclose()
    assert len(retries) > 1


async def test_events_over_h2c(gateway: GatewayProcess, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
        stream = await open_sse(gateway.url("/t"), client=client)
        assert stream.headers.get("connection") is None  # illegal in HTTP/2
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "over h2", id="1")
        (event,) = await stream.wait_events(1)
        assert (event.id, event.data) == ("1", "over h2")
        await stream.aclose()


async def test_unknown_path_is_a_plain_404(gateway: GatewayProcess) -> None:
    status, headers, body = await request(gateway.host, gateway.port, "GET", "/nope")
    assert status == 404
    assert dict(headers)["content-type"].startswith("text/plain")
    assert body == b"not found\n"


async def test_other_methods_are_405_with_allow(gateway: GatewayProcess) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = await request(gateway.host, gateway.port, method, "/t")
        assert status == 405
        assert dict(headers)["allow"] == "GET, HEAD, OPTIONS"


async def test_head_gives_stream_headers_without_a_subscription(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    status, headers, body = await request(gateway.host, gateway.port, "HEAD", "/t")
    assert status == 200
    assert dict(headers)["content-type"] == "text/event-stream; charset=utf-8"
    assert body == b""
    await asyncio.sleep(0.3)
    assert upstream.connections == []


@pytest.mark.parametrize(
    "path",
    ["/orders/..%2F..%2Fadmin", "/orders/%2e%2e", "/orders/a%00b", "/orders/%ff", "/orders/a%2Fb"],
)
async def test_hostile_template_values_are_400(
    gateway: GatewayProcess, upstream: FakeUpstream, path: str
) -> None:
    status, _, _ = await request(gateway.host, gateway.port, "GET", path)
    assert status == 400
    assert upstream.connections == []


async def test_healthz_and_readyz(gateway: GatewayProcess) -> None:
    assert (await request(gateway.host, gateway.port, "GET", "/healthz"))[0] == 200
    assert (await request(gateway.host, gateway.port, "GET", "/readyz"))[0] == 200


def test_check_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "topics:\n  - name: t\n    path: /t\n    upstream: ftp://x/y\n    linger_s: soon\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "topics[0].upstream" in result.stderr
    assert "topics[0].linger_s" in result.stderr


def test_run_refuses_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("topics: []\nserver: {colour: blue}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "server.colour" in result.stderr
    assert "refusing to start" in result.stderr


def test_check_accepts_the_example_config() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(root / "config.example.yaml")],
        capture_output=True,
        text=True,
        check=False,
        env={
            "BACKEND_TOKEN": "example",
            "JWT_SECRET": "example-secret-of-at-least-32-bytes",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr
