"""CorsPolicy: origin matching, actual-response headers and preflights."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import CorsConfig
from gateway.cors import CorsPolicy

TICKET_PATH = "/_gateway/ticket"


def policy(origins: list[str], credentials: bool = True, max_age: int = 600) -> CorsPolicy:
    config = CorsConfig.model_validate(
        {"allowed_origins": origins, "allow_credentials": credentials, "max_age_s": max_age}
    )
    return CorsPolicy(config, ticket_path=TICKET_PATH)


APP = policy(["https://app.example.com", "https://*.example.org", "http://localhost:3000"])


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://APP.Example.com", True),  # hosts and schemes are case-insensitive
        ("https://app.example.com:443", True),  # the default port is the same origin
        ("https://app.example.com:8443", False),
        ("http://app.example.com", False),  # another scheme
        ("https://app.example.com.evil.com", False),
        ("https://evilapp.example.com", False),
        ("https://app.example.com/", False),  # an Origin never has a path
        ("https://a.example.org", True),
        ("https://a.b.example.org", True),  # any depth
        ("https://example.org", False),  # the bare domain is not a subdomain
        ("https://evilexample.org", False),
        ("https://a.example.org.evil.net", False),
        ("http://a.example.org", False),
        ("https://a.example.org:444", False),  # ports only if written
        ("https://.example.org", False),
        ("http://localhost:3000", True),
        ("http://localhost", False),
        ("null", False),
        ("", False),
        (None, False),
        ("chrome-extension://abcdef", False),
        ("https://app.example.com\r\nx: y", False),
        ("https://ápp.example.com", False),
    ],
)
def test_allow_origin(origin: str | None, allowed: bool) -> None:
    assert APP.allow_origin(origin) is allowed


def test_wildcard_subdomain_with_a_port_needs_that_port() -> None:
    ported = policy(["https://*.example.org:8443"])
    assert ported.allow_origin("https://a.example.org:8443")
    assert not ported.allow_origin("https://a.example.org")


def test_nothing_configured_allows_nothing() -> None:
    empty = policy([])
    assert not empty.allow_origin("https://app.example.com")
    assert empty.response_headers("https://app.example.com") == [(b"vary", b"origin")]


def test_response_headers_echo_the_origin_with_credentials() -> None:
    assert APP.response_headers("https://a.b.example.org") == [
        (b"access-control-allow-origin", b"https://a.b.example.org"),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"origin"),
    ]


def test_refused_origin_still_varies_on_origin() -> None:
    assert APP.response_headers("https://evil.com") == [(b"vary", b"origin")]
    assert APP.response_headers(None) == []  # same-origin or not a browser


def test_without_credentials_no_credentials_header() -> None:
    public = policy(["https://app.example.com"], credentials=False)
    assert public.response_headers("https://app.example.com") == [
        (b"access-control-allow-origin", b"https://app.example.com"),
        (b"vary", b"origin"),
    ]


def test_star_only_without_credentials_and_never_echoed_with_them() -> None:
    anyone = policy(["*"], credentials=False)
    assert anyone.allow_origin("https://whoever.net")
    headers = anyone.response_headers("https://whoever.net")
    assert (b"access-control-allow-origin", b"*") in headers
    assert all(name != b"access-control-allow-credentials" for name, _ in headers)
    with pytest.raises(ValueError, match="allow_credentials"):
        policy(["*"], credentials=True)


def preflight(
    origin: str | None, method: str | None, requested: str | None = None, path: str = "/prices"
) -> Any:
    headers: list[tuple[bytes, bytes]] = []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if method is not None:
        headers.append((b"access-control-request-method", method.encode()))
    if requested is not None:
        headers.append((b"access-control-request-headers", requested.encode()))
    return APP.preflight_headers(headers, path)


def test_preflight_for_an_eventsource_with_last_event_id() -> None:
    assert preflight("https://app.example.com", "GET", "last-event-id") == [
        (b"access-control-allow-origin", b"https://app.example.com"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
        (b"access-control-allow-headers", b"last-event-id"),
        (b"access-control-max-age", b"600"),
        (b"vary", b"origin, access-control-request-method, access-control-request-headers"),
    ]


def test_preflight_lists_only_allowed_requested_headers() -> None:
    headers = dict(
        preflight("https://app.example.com", "GET", "X-Evil, Authorization , Cache-Control,cookie")
    )
    assert headers[b"access-control-allow-headers"] == b"authorization, cache-control"


def test_preflight_with_only_disallowed_headers_lists_none() -> None:
    headers = dict(preflight("https://app.example.com", "GET", "x-custom"))
    assert b"access-control-allow-headers" not in headers
    assert headers[b"access-control-allow-methods"] == b"GET, HEAD, OPTIONS"


def test_preflight_post_only_on_the_ticket_path() -> None:
    assert preflight("https://app.example.com", "POST") is None
    headers = dict(preflight("https://app.example.com", "POST", "authorization", TICKET_PATH))
    assert headers[b"access-control-allow-methods"] == b"GET, HEAD, OPTIONS, POST"
    assert headers[b"access-control-allow-headers"] == b"authorization"


@pytest.mark.parametrize(
    ("origin", "method"),
    [
        ("https://evil.com", "GET"),
        (None, "GET"),
        ("https://app.example.com", None),  # not a preflight
        ("https://app.example.com", "DELETE"),
        ("https://app.example.com", "PUT"),
        ("https://app.example.com", "get"),  # methods are case-sensitive
    ],
)
def test_refused_preflights(origin: str | None, method: str | None) -> None:
    assert preflight(origin, method) is None


def test_max_age_is_configurable() -> None:
    quick = policy(["https://app.example.com"], max_age=0)
    headers = dict(
        quick.preflight_headers(
            [(b"origin", b"https://app.example.com"), (b"access-control-request-method", b"GET")]
        )
        or []
    )
    assert headers[b"access-control-max-age"] == b"0"
