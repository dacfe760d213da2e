"""JWKSCache against a real loopback JWKS server: rotation, unknown-kid storms, outages,
slow identity providers (without blocking the event loop) and which keys are used."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from gateway.auth import Authenticator, Credential
from gateway.errors import Unauthorized
from gateway.jwks import MAX_JWKS_BYTES, JWKSCache, parse_jwks
from tests.test_auth_support import (
    EC_KEY,
    ED_KEY,
    RSA_KEY,
    RSA_OTHER,
    JWKSServer,
    gateway_config,
    public_jwk,
    token,
)

REFRESH_S = 300.0
COOLDOWN_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    server: JWKSServer
    cache: JWKSCache
    clock: FakeClock


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    server = JWKSServer([public_jwk(RSA_KEY, "k1")])
    await server.start()
    clock = FakeClock()
    async with httpx.AsyncClient() as client:
        cache = JWKSCache(
            server.url,
            client,
            refresh_s=REFRESH_S,
            cooldown_s=COOLDOWN_S,
            timeout_s=1.0,
            algorithms=["RS256", "PS256", "ES256", "EdDSA"],
            clock=clock,
        )
        try:
            yield Setup(server, cache, clock)
        finally:
            await cache.aclose()
            await server.stop()


async def settle(cache: JWKSCache) -> None:
    """Let a background refresh finish."""
    for _ in range(200):
        if cache._inflight is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the background fetch did not finish")


async def unauthorized(awaitable: Awaitable[Any]) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await awaitable
    assert type(info.value) is Unauthorized
    return info.value


# --------------------------------------------------------------------------- rotation


async def test_first_lookup_fetches_once(setup: Setup) -> None:
    key = await setup.cache.key_for("k1", "RS256")
    assert key.key_id == "k1"
    assert key.algorithm_name == "RS256"
    await setup.cache.key_for("k1", "RS256")
    assert setup.server.requests == 1
    assert setup.server.paths == ["/.well-known/jwks.json"]


async def test_rotation_new_kid_is_picked_up_after_an_unknown_kid_refetch(setup: Setup) -> None:
    await setup.cache.key_for("k1")
    setup.server.keys = [public_jwk(RSA_OTHER, "k2")]  # the IdP rotates: k1 out, k2 in
    setup.clock.now += COOLDOWN_S
    key = await setup.cache.key_for("k2")
    assert key.key_id == "k2"
    assert setup.server.requests == 2
    # k1 is gone now, and the cooldown forbids asking again so soon.
    await unauthorized(setup.cache.key_for("k1"))
    assert setup.server.requests == 2


async def test_unknown_kid_within_cooldown_does_not_refetch(setup: Setup) -> None:
    await setup.cache.key_for("k1")
    setup.server.keys = [public_jwk(RSA_KEY, "k1"), public_jwk(RSA_OTHER, "k2")]
    setup.clock.now += COOLDOWN_S - 1
    await unauthorized(setup.cache.key_for("k2"))
    assert setup.server.requests == 1
    setup.clock.now += 1
    assert (await setup.cache.key_for("k2")).key_id == "k2"
    assert setup.server.requests == 2


async def test_keys_refresh_in_the_background_after_refresh_s(setup: Setup) -> None:
    await setup.cache.key_for("k1")
    setup.server.keys = [public_jwk(RSA_OTHER, "k1")]  # same kid, new key material
    setup.clock.now += REFRESH_S
    stale = await setup.cache.key_for("k1")  # served at once from the old set
    assert stale.key.public_numbers() == RSA_KEY.public_key().public_numbers()
    await settle(setup.cache)
    fresh = await setup.cache.key_for("k1")
    assert fresh.key.public_numbers() == RSA_OTHER.public_key().public_numbers()
    assert setup.server.requests == 2


# --------------------------------------------------------------------------- storms


async def test_unknown_kid_storm_costs_one_fetch_per_cooldown(setup: Setup) -> None:
    setup.server.delay = 0.2  # so the storm piles up on the in-flight fetch
    results = await asyncio.gather(
        *(setup.cache.key_for(f"made-up-{n}") for n in range(200)), return_exceptions=True
    )
    assert all(type(result) is Unauthorized for result in results)
    assert setup.server.requests == 1  # the first fetch, shared by all 200

    setup.clock.now += COOLDOWN_S
    results = await asyncio.gather(
        *(setup.cache.key_for(f"other-{n}") for n in range(200)), return_exceptions=True
    )
    assert all(type(result) is Unauthorized for result in results)
    assert setup.server.requests == 2  # one refetch for the whole second storm

    results = await asyncio.gather(
        *(setup.cache.key_for(f"third-{n}") for n in range(200)), return_exceptions=True
    )
    assert setup.server.requests == 2  # still within the cooldown: nothing
    assert await setup.cache.key_for("k1")  # the real key is unaffected


async def test_concurrent_first_lookups_share_one_fetch(setup: Setup) -> None:
    setup.server.delay = 0.1
    keys = await asyncio.gather(*(setup.cache.key_for("k1") for _ in range(50)))
    assert {key.key_id for key in keys} == {"k1"}
    assert setup.server.requests == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(setup: Setup) -> None:
    setup.server.delay = 0.2
    first = asyncio.ensure_future(setup.cache.key_for("k1"))
    second = asyncio.ensure_future(setup.cache.key_for("k1"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).key_id == "k1"
    assert first.cancelled()
    assert setup.server.requests == 1


# --------------------------------------------------------------------------- outages


async def test_stopped_server_keeps_the_last_good_keys(setup: Setup) -> None:
    await setup.cache.key_for("k1")
    await setup.server.stop()  # connection refused from now on
    setup.clock.now += REFRESH_S
    assert (await setup.cache.key_for("k1")).key_id == "k1"  # stale keys keep working
    await settle(setup.cache)
    assert setup.cache.last_error is not None
    assert "Connect" in setup.cache.last_error
    assert (await setup.cache.key_for("k1")).key_id == "k1"
    await unauthorized(setup.cache.key_for("k9"))  # unknown stays a plain 401


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, None, "HTTP 503"),
        (302, None, "HTTP 302"),  # redirects are not followed
        (200, b"{not json", "JSONDecodeError"),
        (200, b'{"no": "keys"}', "not a JWK set"),
        (200, b'{"keys": []}', "no usable signing key"),
        (200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}', "no usable"),
        (200, b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
        (200, b" " * (MAX_JWKS_BYTES + 1), "larger than"),
    ],
    ids=["503", "redirect", "bad-json", "not-jwks", "empty", "only-oct", "deep-json", "huge"],
)
async def test_failed_refresh_keeps_the_last_good_keys(
    setup: Setup, status: int, body: bytes | None, error: str
) -> None:
    await setup.cache.key_for("k1")
    setup.server.status = status
    setup.server.body = body
    setup.clock.now += REFRESH_S
    assert (await setup.cache.key_for("k1")).key_id == "k1"
    await settle(setup.cache)
    assert setup.server.requests == 2
    assert setup.cache.last_error is not None
    assert error in setup.cache.last_error
    assert (await setup.cache.key_for("k1")).key_id == "k1"
    # A failed attempt is not retried before the cooldown...
    setup.clock.now += COOLDOWN_S - 1
    await setup.cache.key_for("k1")
    await settle(setup.cache)
    assert setup.server.requests == 2
    # ...and is retried after it; a recovered server is used again.
    setup.server.status, setup.server.body = 200, None
    setup.clock.now += 1
    await setup.cache.key_for("k1")
    await settle(setup.cache)
    assert setup.server.requests == 3
    assert setup.cache.last_error is None


async def test_timeout_keeps_the_last_good_keys(setup: Setup) -> None:
    await setup.cache.key_for("k1")
    setup.server.delay = 5.0  # longer than timeout_s=1
    setup.clock.now += REFRESH_S
    started = time.monotonic()
    assert (await setup.cache.key_for("k1")).key_id == "k1"
    assert time.monotonic() - started < 0.5  # stale-while-revalidate: no waiting
    await settle(setup.cache)
    assert time.monotonic() - started < 2.0
    assert setup.cache.last_error is not None
    assert "TimeoutError" in setup.cache.last_error


async def test_no_keys_ever_is_unauthorized_and_rate_limited(setup: Setup) -> None:
    setup.server.status = 503
    await unauthorized(setup.cache.key_for("k1"))
    await unauthorized(setup.cache.keys("RS256"))
    assert setup.server.requests == 1  # the cooldown also limits retries while down
    setup.server.status = 200
    setup.clock.now += COOLDOWN_S
    assert (await setup.cache.key_for("k1")).key_id == "k1"


# --------------------------------------------------------------------------- slow IdP


async def _max_loop_lag(work: Awaitable[Any]) -> tuple[Any, float]:
    """Run ``work`` while a ticker samples the loop every 10 ms; return the worst lag."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            lags.append(now - last - 0.01)
            last = now

    ticking = asyncio.ensure_future(ticker())
    try:
        result = await work
    finally:
        done.set()
        await ticking
    assert len(lags) >= 5
    return result, max(lags)


async def test_lag_probe_detects_a_blocked_loop() -> None:
    async def blocking() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 -- on purpose: what a urllib fetch would do
        await asyncio.sleep(0.05)

    _, lag = await _max_loop_lag(blocking())
    assert lag > 0.25


async def test_slow_jwks_does_not_block_the_event_loop() -> None:
    server = JWKSServer([public_jwk(RSA_KEY, "k1")])
    server.delay = 2.0
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            cache = JWKSCache(server.url, client, timeout_s=5.0)
            started = time.monotonic()
            key, lag = await _max_loop_lag(cache.key_for("k1"))
            assert time.monotonic() - started >= 2.0
            assert key.key_id == "k1"
            assert lag < 0.1
            await cache.aclose()
    finally:
        await server.stop()


# --------------------------------------------------------------------------- which keys


def test_parse_skips_unusable_keys_and_binds_algorithms() -> None:
    rsa_any = public_jwk(RSA_KEY, "rsa")
    rsa_ps = public_jwk(RSA_OTHER, "rsa-ps", "PS256")
    document = {
        "keys": [
            rsa_any,
            rsa_ps,
            {**public_jwk(RSA_KEY, "enc"), "use": "enc"},
            {**public_jwk(RSA_KEY, "wrap"), "key_ops": ["wrapKey"]},
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "hmac"},
            {**public_jwk(RSA_KEY, "private"), "d": "AQAB"},
            public_jwk(EC_KEY, "ec"),
            public_jwk(ED_KEY, None),
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object",
            {**public_jwk(RSA_KEY, "hs-declared"), "alg": "HS256"},
        ]
    }
    keys, skipped = parse_jwks(json.dumps(document).encode(), ["RS256", "PS256", "EdDSA"])
    bound = sorted((key.key_id or "-", key.algorithm_name) for key in keys)
    assert bound == [
        ("-", "EdDSA"),
        ("rsa", "PS256"),
        ("rsa", "RS256"),
        ("rsa-ps", "PS256"),
    ]
    assert len(skipped) == 8  # enc, wrap, oct, private, ec (ES256 not configured), broken, ...


async def test_enc_keys_are_never_used(setup: Setup) -> None:
    setup.server.keys = [public_jwk(RSA_KEY, "k1"), {**public_jwk(RSA_OTHER, "e1"), "use": "enc"}]
    await unauthorized(setup.cache.key_for("e1"))
    assert [key.key_id for key in await setup.cache.keys("RS256")] == ["k1"]


async def test_keys_without_kid_serve_tokens_without_kid() -> None:
    server = JWKSServer([public_jwk(RSA_KEY, None), public_jwk(EC_KEY, None)])
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            config = gateway_config(
                {"jwt": {"algorithms": ["RS256", "ES256", "PS256"], "jwks_url": server.url}}
            )
            assert config.auth is not None
            auth = Authenticator(config.auth, config.topics, client)
            for key, alg in ((RSA_KEY, "RS256"), (RSA_KEY, "PS256"), (EC_KEY, "ES256")):
                principal = await auth.authenticate(Credential(token(key, alg), "header"))
                assert principal is not None
                assert principal.subject == "alice"
            # A token naming a kid is only checked against keys with that kid.
            named = token(RSA_KEY, "RS256", headers={"kid": "k1"})
            await unauthorized(auth.authenticate(Credential(named, "header")))
            await auth.aclose()
    finally:
        await server.stop()


async def test_jwks_requires_a_client() -> None:
    config = gateway_config({"jwt": {"algorithms": ["RS256"], "jwks_url": "https://idp/jwks"}})
    assert config.auth is not None
    with pytest.raises(ValueError, match="AsyncClient"):
        Authenticator(config.auth, config.topics)


def test_pyjwk_binding_is_what_pyjwt_enforces() -> None:
    # Why keys are bound per algorithm: pyjwt refuses a PyJWK for another algorithm.
    keys, _ = parse_jwks(json.dumps({"keys": [public_jwk(RSA_KEY, "k")]}).encode(), ["RS256"])
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token(RSA_KEY, "PS256"), keys[0], algorithms=["RS256", "PS256"])
