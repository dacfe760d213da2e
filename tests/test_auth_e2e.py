"""Auth at the edge, through a real gateway process: credentials from header,
cookie and query; grants by name and pattern; 401/403 with RFC 6750 headers;
tickets; expiry mid-stream; CORS; limits; and no token in any log line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.clients import open_sse, request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-!"
OPAQUE = "dashboard-token-0123456789"
ORIGIN = "https://app.example.com"


def token(grants: list[str], *, sub: str = "alice", exp_in: float = 600, **extra: Any) -> str:
    claims = {"sub": sub, "topics": grants, "exp": int(time.time() + exp_in), **extra}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def auth_config(upstream: FakeUpstream, **limits: Any) -> dict[str, Any]:
    return {
        "auth": {
            "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway_s": 0},
            "tokens": [
                {
                    "sha256": hashlib.sha256(OPAQUE.encode()).hexdigest(),
                    "subject": "dashboard",
                    "topics": ["news"],
                }
            ],
            "tickets": {"ttl_s": 2},
            "cors": {"allowed_origins": [ORIGIN, "https://*.example.org"]},
        },
        "limits": limits,
        "topics": [
            {"name": "prices", "path": "/prices", "upstream": upstream.url("/prices")},
            {"name": "orders", "path": "/orders/{id}", "upstream": upstream.url("/o/{id}")},
            {"name": "news", "path": "/news", "upstream": upstream.url("/news"), "public": True},
        ],
    }


@pytest.fixture
async def gateway(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with GatewayProcess(auth_config(upstream), tmp_path=tmp_path) as process:
        yield process
        # whatever the test did: no credential ever reaches a log line
        log = process.log_text()
        assert SECRET not in log
        assert OPAQUE not in log
        assert "eyJ" not in log  # the start of every JWT
        assert "t1." not in log  # tickets
        assert "token=" not in log


async def get(
    gateway: GatewayProcess, path: str, headers: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    status, head, body = await request(
        gateway.host,
        gateway.port,
        "HEAD" if path.startswith("HEAD ") else "GET",
        path,
        headers=headers or [],
    )
    return status, {name.lower(): value for name, value in head}, body


async def test_401_403_and_grants(gateway: GatewayProcess) -> None:
    status, headers, body = await get(gateway, "/prices")
    assert (status, body) == (401, b"missing credentials\n")
    assert headers["www-authenticate"] == "Bearer"

    status, headers, body = await get(gateway, "/prices", [("authorization", "Bearer nope")])
    assert (status, body) == (401, b"invalid token\n")
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"')

    expired = token(["prices"], exp_in=-10)
    status, _, body = await get(gateway, "/prices", [("authorization", f"Bearer {expired}")])
    assert (status, body) == (401, b"token expired\n")

    only_prices = token(["prices"])
    status, headers, body = await get(
        gateway, "/orders/1", [("authorization", f"Bearer {only_prices}")]
    )
    assert (status, body) == (403, b"not granted\n")
    assert headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')

    # a pattern grant covers every instance, and nothing else
    orders = token(["/orders/*"])
    stream = await open_sse(
        gateway.url("/orders/42"), headers={"authorization": f"Bearer {orders}"}
    )
    assert stream.status == 200
    await stream.aclose()
    status, _, _ = await get(gateway, "/prices", [("authorization", f"Bearer {orders}")])
    assert status == 403

    # multiplexed: every topic is checked
    mux = "/events?topic=/prices&topic=/orders/7"
    status, _, _ = await get(gateway, mux, [("authorization", f"Bearer {only_prices}")])
    assert status == 403
    both = token(["prices", "/orders/*"])
    stream = await open_sse(gateway.url(mux), headers={"authorization": f"Bearer {both}"})
    assert stream.status == 200
    await stream.aclose()

    # public topics need nothing
    stream = await open_sse(gateway.url("/news"))
    assert stream.status == 200
    await stream.aclose()


async def test_credentials_from_header_cookie_and_query(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    good = token(["prices"])
    for headers, query in (
        ({"authorization": f"Bearer {good}"}, ""),
        ({"cookie": f"other=1; sse_token={good}"}, ""),
        ({}, f"?token={good}"),
    ):
        stream = await open_sse(gateway.url(f"/prices{query}"), headers=headers)
        assert stream.status == 200
        await upstream.wait_connections("/prices", 1)
        upstream.publish("/prices", "p", id=str(time.monotonic_ns()))
        await stream.wait_events(1)
        await stream.aclose()
    # the header wins: a bad header is not rescued by a good query token
    status, _, _ = await get(gateway, f"/prices?token={good}", [("authorization", "Bearer bad")])
    assert status == 401


async def test_hostile_tokens_are_401_never_5xx(gateway: GatewayProcess) -> None:
    none_alg = jwt.encode({"sub": "x", "topics": ["prices"], "exp": 2**31}, "", algorithm="none")
    hostile = [
        "",
        "a.b",
        "a.b.c.d",
        "....",
        "e30.e30.",
        none_alg,
        token(["prices"]) + "x",
        "x" * 20000,
        "eyJhbGciOiJIUzI1NiJ9." + "e" * 5000 + ".sig",
        jwt.encode({"sub": "x", "topics": "prices", "exp": 2**31}, SECRET, algorithm="HS256"),
    ]
    for value in hostile:
        status, _, _ = await get(gateway, "/prices", [("authorization", f"Bearer {value}")])
        assert status in (401, 431), value[:40]


async def test_expiry_ends_the_stream(gateway: GatewayProcess) -> None:
    short = token(["prices"], exp_in=2.5)
    stream = await open_sse(gateway.url(f"/prices?token={short}"))
    assert stream.status == 200
    await stream.wait_closed(timeout=10)
    assert stream.raw.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"retry: ")
    await asyncio.sleep(1.0)
    status, _, body = await get(gateway, f"/prices?token={short}")
    assert (status, body) == (401, b"token expired\n")
    assert "reason=credentials_expired" in gateway.log_text()


async def test_tickets_are_single_use_scoped_and_short_lived(gateway: GatewayProcess) -> None:
    caller = token(["prices"])

    async def issue() -> str:
        status, _, body = await request(
            gateway.host,
            gateway.port,
            "POST",
            "/_gateway/ticket",
            headers=[("authorization", f"Bearer {caller}")],
        )
        assert status == 200
        answer = json.loads(body)
        assert answer["expires_in"] == 2
        ticket: str = answer["ticket"]
        return ticket

    ticket = await issue()
    stream = await open_sse(gateway.url(f"/prices?token={ticket}"))
    assert stream.status == 200
    await stream.aclose()
    assert (await get(gateway, f"/prices?token={ticket}"))[0] == 401  # used
    ticket = await issue()
    assert (await get(gateway, f"/orders/1?token={ticket}"))[0] == 403  # the caller's grants
    ticket = await issue()
    await asyncio.sleep(2.5)
    assert (await get(gateway, f"/prices?token={ticket}"))[0] == 401  # expired
    status, _, _ = await request(gateway.host, gateway.port, "POST", "/_gateway/ticket")
    assert status == 401


async def test_cors_preflight_and_credentialed_stream(gateway: GatewayProcess) -> None:
    preflight = [
        ("origin", ORIGIN),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "last-event-id, authorization, x-evil"),
    ]
    status, head, _ = await request(gateway.host, gateway.port, "OPTIONS", "/prices", preflight)
    headers = {name.lower(): value for name, value in head}
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["access-control-allow-headers"] == "last-event-id, authorization"
    status, head, _ = await request(
        gateway.host,
        gateway.port,
        "OPTIONS",
        "/prices",
        [("origin", "https://evil.example"), ("access-control-request-method", "GET")],
    )
    assert status == 204
    assert not any(name.lower().startswith("access-control-") for name, _ in head)

    stream = await open_sse(gateway.url("/news"), headers={"origin": "https://a.b.example.org"})
    assert stream.headers["access-control-allow-origin"] == "https://a.b.example.org"
    assert stream.headers["access-control-allow-credentials"] == "true"
    await stream.aclose()
    status, headers, _ = await get(gateway, "/prices", [("origin", ORIGIN)])
    assert status == 401
    assert headers["access-control-allow-origin"] == ORIGIN  # the page can read the 401


async def test_limits_answer_overload_with_retry(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = auth_config(
        upstream, max_connections_per_ip=3, max_connections_per_subject=1, max_url_bytes=300
    )
    async with GatewayProcess(config, tmp_path=tmp_path) as gateway:
        first = await open_sse(gateway.url(f"/prices?token={token(['prices'])}"))
        assert first.status == 200
        # the same subject again: over its cap
        second = await open_sse(gateway.url(f"/prices?token={token(['prices'])}"))
        assert second.status == 200
        await second.wait_closed(timeout=5)
        assert second.raw.startswith(b": overloaded\nretry: ")
        assert 10000 <= (second.retry or 0) <= 30000
        # per client IP: two more anonymous streams fit, the third does not
        news = [await open_sse(gateway.url("/news")) for _ in range(2)]
        third = await open_sse(gateway.url("/news"))
        await third.wait_closed(timeout=5)
        assert third.raw.startswith(b": overloaded\n")
        status, _, _ = await get(gateway, "/news?" + "x" * 400)
        assert status == 414
        many = [(f"x-h{n}", "1") for n in range(100)]
        status, _, _ = await get(gateway, "/news", many)
        assert status == 431
        for stream in (first, *news):
            await stream.aclose()
        status, _, body = await get(gateway, "/metrics")
        assert b'sse_gateway_limits_hit_total{limit="connections"} 2.0' in body
        assert b'sse_gateway_limits_hit_total{limit="request_size"} 2.0' in body
