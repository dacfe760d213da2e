"""Tests for gateway.topics: matching, canonical instance paths, hostile parameter values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import TopicConfig
from gateway.errors import BadRequest, NotFound
from gateway.topics import TopicInstance, TopicRouter


def make(name: str, path: str, upstream: str, **extra: Any) -> TopicConfig:
    return TopicConfig(name=name, path=path, upstream=upstream, **extra)


TICKER = make("ticker", "/markets/ticker", "http://backend/ticker?full=1")
NEW_ORDERS = make("new-orders", "/orders/new", "http://backend/orders/new")
ORDERS = make("orders", "/orders/{id}", "https://backend/orders/{id}/events?since={id}")
ITEMS = make(
    "items",
    "/shops/{shop}/items/{sku}",
    "https://backend/s/{shop}/i/{sku}",
    params={"sku": "[A-Z]{3}-[0-9]+"},
)


@pytest.fixture
def router() -> TopicRouter:
    return TopicRouter([TICKER, NEW_ORDERS, ORDERS, ITEMS])


def test_literal_topic(router: TopicRouter) -> None:
    assert router.resolve("/markets/ticker") == TopicInstance(
        topic=TICKER, path="/markets/ticker", upstream_url="http://backend/ticker?full=1", params=()
    )


def test_literal_is_exact_no_slash_folding_case_sensitive(router: TopicRouter) -> None:
    for raw in ("/markets/ticker/", "/Markets/ticker", "/markets//ticker", "markets/ticker"):
        with pytest.raises(NotFound):
            router.resolve(raw)


def test_template_topic(router: TopicRouter) -> None:
    assert router.resolve("/orders/42") == TopicInstance(
        topic=ORDERS,
        path="/orders/42",
        upstream_url="https://backend/orders/42/events?since=42",
        params=(("id", "42"),),
    )


def test_params_in_path_order(router: TopicRouter) -> None:
    got = router.resolve("/shops/acme/items/ABC-12")
    assert got.params == (("shop", "acme"), ("sku", "ABC-12"))
    assert got.upstream_url == "https://backend/s/acme/i/ABC-12"


def test_literal_wins_over_template(router: TopicRouter) -> None:
    assert router.resolve("/orders/new").topic is NEW_ORDERS
    assert router.resolve("/orders/old").topic is ORDERS


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/orders/a-b", "/orders/a-b"),
        ("/orders/a%2Db", "/orders/a-b"),
        ("/orders/a%2db", "/orders/a-b"),
        ("/orders/%61%2D%62", "/orders/a-b"),
        ("/orders/a@b", "/orders/a%40b"),
        ("/orders/a%40b", "/orders/a%40b"),
        ("/orders/caf%C3%A9", "/orders/caf%C3%A9"),
        ("/orders/caf%c3%a9", "/orders/caf%C3%A9"),
        ("/orders/a+b", "/orders/a%2Bb"),
        ("/orders/~x_y.z", "/orders/~x_y.z"),
    ],
)
def test_canonical_instance_path(router: TopicRouter, raw: str, canonical: str) -> None:
    assert router.resolve(raw).path == canonical
    # The canonical path is a fixed point: resolving it gives the very same instance.
    assert router.resolve(canonical) == router.resolve(raw)


def test_equivalent_spellings_give_equal_instances(router: TopicRouter) -> None:
    spellings = ["/orders/a-b", "/orders/a%2Db", "/orders/%61-%62"]
    instances = {router.resolve(raw) for raw in spellings}
    assert len(instances) == 1


def test_percent_encoded_literal_reaches_the_literal_topic(router: TopicRouter) -> None:
    # Otherwise /orders/{id} would claim it, under the literal topic's own instance key.
    got = router.resolve("/orders/n%65w")
    assert got.topic is NEW_ORDERS
    assert got.path == "/orders/new"
    assert router.resolve("/markets/tick%65r").topic is TICKER


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("%3F", "%3F"),  # ?
        ("%23", "%23"),  # #
        ("%26", "%26"),  # &
        ("a%3Db%26c%3Dd", "a%3Db%26c%3Dd"),  # a=b&c=d
        ("%20", "%20"),
        ("a%20b", "a%20b"),
        ("%E2%9C%93", "%E2%9C%93"),  # check mark
        ("%F0%9F%98%80", "%F0%9F%98%80"),  # emoji, 4 UTF-8 bytes
        ("%25", "%25"),  # a literal percent must not decode twice upstream
        ("%252F", "%252F"),
        ("...", "..."),
        ("a..b", "a..b"),
        ("%3A%40", "%3A%40"),
    ],
)
def test_values_cannot_change_upstream_structure(
    router: TopicRouter, value: str, encoded: str
) -> None:
    got = router.resolve(f"/orders/{value}")
    assert got.path == f"/orders/{encoded}"
    assert got.upstream_url == f"https://backend/orders/{encoded}/events?since={encoded}"


def test_exact_upstream_url_for_query_like_value(router: TopicRouter) -> None:
    got = router.resolve("/orders/1%3Fadmin%3Dtrue%26x%3D%23frag")
    assert got.params == (("id", "1?admin=true&x=#frag"),)
    assert got.upstream_url == (
        "https://backend/orders/1%3Fadmin%3Dtrue%26x%3D%23frag/events"
        "?since=1%3Fadmin%3Dtrue%26x%3D%23frag"
    )


RAW_CHARS = "non-ASCII, space and control characters to be %-encoded"


@pytest.mark.parametrize(
    ("raw_value", "why"),
    [
        ("..%2F", "no '/', '\\' or control characters"),
        ("..%2f..%2fadmin", "no '/', '\\' or control characters"),
        ("%2F", "no '/', '\\' or control characters"),
        ("a%2Fb", "no '/', '\\' or control characters"),
        ("a%5Cb", "no '/', '\\' or control characters"),
        ("..%5C", "no '/', '\\' or control characters"),
        ("%00", "no '/', '\\' or control characters"),
        ("a%0Ab", "no '/', '\\' or control characters"),
        ("a%0D%0AX-Injected:%201", "no '/', '\\' or control characters"),
        ("%09", "no '/', '\\' or control characters"),
        ("%7F", "no '/', '\\' or control characters"),
        ("%C2%85", "no '/', '\\' or control characters"),  # C1 NEL
        ("%2e%2e", "a value other than '.' or '..'"),
        ("%2E", "a value other than '.' or '..'"),
        ("..", "a value other than '.' or '..'"),
        (".", "a value other than '.' or '..'"),
        ("", "a non-empty value"),
        ("%zz", "valid %-escapes"),
        ("%4", "valid %-escapes"),
        ("abc%", "valid %-escapes"),
        ("%C3%28", "%-escapes of valid UTF-8"),
        ("%FF", "%-escapes of valid UTF-8"),
        ("%ED%A0%80", "%-escapes of valid UTF-8"),  # an encoded surrogate
        ("%C0%AF", "%-escapes of valid UTF-8"),  # overlong "/"
        ("\udcff", RAW_CHARS),  # a surrogate smuggled in by the server
        ("caf\u00e9", RAW_CHARS),  # raw UTF-8 that the server decoded as latin-1, or not
        ("a b", RAW_CHARS),
        ("a\tb", RAW_CHARS),
        ("a\x00b", RAW_CHARS),
        ("a" * 257, "at most 256 bytes"),
        ("%C3%A9" * 129, "at most 256 bytes"),
    ],
)
def test_hostile_values_are_bad_requests(router: TopicRouter, raw_value: str, why: str) -> None:
    with pytest.raises(BadRequest) as info:
        router.resolve(f"/orders/{raw_value}")
    assert info.value.detail.startswith(f"path parameter 'id': expected {why}, got ")


def test_limits_are_inclusive(router: TopicRouter) -> None:
    assert router.resolve("/orders/" + "a" * 256).params == (("id", "a" * 256),)
    assert router.resolve("/orders/" + "%C3%A9" * 128).params == (("id", "é" * 128),)


def test_bad_request_detail_is_short_and_escaped(router: TopicRouter) -> None:
    with pytest.raises(BadRequest) as info:
        router.resolve("/orders/" + "%0A<script>" + "x" * 5000)
    detail = info.value.detail
    assert len(detail) < 140
    assert "\n" not in detail
    assert detail.endswith("...")


def test_regex_constraint(router: TopicRouter) -> None:
    assert router.resolve("/shops/acme/items/XYZ-9").params[1] == ("sku", "XYZ-9")
    for sku in ("xyz-9", "XYZ-9x", "XYZ-", "%58YZ-9%0A"):
        with pytest.raises(BadRequest) as info:
            router.resolve(f"/shops/acme/items/{sku}")
        assert "'sku'" in info.value.detail
    # fullmatch, not search or match: a matching prefix or suffix is not enough
    for sku in ("ABC-1x", "xABC-1"):
        with pytest.raises(BadRequest, match="the topic's pattern"):
            router.resolve(f"/shops/acme/items/{sku}")


def test_regex_applies_to_the_decoded_value(router: TopicRouter) -> None:
    assert router.resolve("/shops/acme/items/%41BC-1").path == "/shops/acme/items/ABC-1"


def test_not_found(router: TopicRouter) -> None:
    for raw in ("/", "/nope", "/orders", "/orders/1/2", "/shops/acme/things/ABC-1", "*", ""):
        with pytest.raises(NotFound):
            router.resolve(raw)


def test_bad_escape_outside_a_parameter_is_not_found(router: TopicRouter) -> None:
    with pytest.raises(NotFound):
        router.resolve("/shops/acme/it%zzems/ABC-1")


def test_precedence_more_literal_segments_then_config_order() -> None:
    wide = make("wide", "/a/{x}/{y}", "http://b/wide/{x}/{y}")
    left = make("left", "/a/{x}/c", "http://b/left/{x}")
    right = make("right", "/a/b/{y}", "http://b/right/{y}")
    router = TopicRouter([wide, left, right])
    assert router.resolve("/a/b/c").topic is left  # two literals each: config order
    assert router.resolve("/a/z/c").topic is left
    assert router.resolve("/a/b/z").topic is right
    assert router.resolve("/a/z/z").topic is wide
    assert TopicRouter([wide, right, left]).resolve("/a/b/c").topic is right


def test_spellings_resolve_by_decoded_segments_across_templates() -> None:
    left = make("left", "/a/{x}/c", "http://b/left/{x}")
    right = make("right", "/a/b/{y}", "http://b/right/{y}")
    router = TopicRouter([left, right])
    # /a/b/%63 is /a/b/c: it must not reach `right` under the key "/a/b/c" owned by `left`.
    assert router.resolve("/a/b/%63") == router.resolve("/a/b/c")
    assert router.resolve("/a/%62/c") == router.resolve("/a/b/c")


def test_rejected_value_falls_through_to_the_next_template() -> None:
    numeric = make("numeric", "/o/{id}", "http://b/n/{id}", params={"id": "[0-9]+"})
    other = make("other", "/{kind}/{key}", "http://b/{kind}/{key}")
    router = TopicRouter([numeric, other])
    assert router.resolve("/o/12").topic is numeric
    assert router.resolve("/o/abc").topic is other
    with pytest.raises(BadRequest, match="'id'"):
        TopicRouter([numeric]).resolve("/o/abc")
    # When every candidate refuses, the most specific one explains why.
    with pytest.raises(BadRequest, match="'id'"):
        router.resolve("/o/%2F")


def test_literal_topics_with_sub_delims() -> None:
    topic = make("odd", "/a:b@c/x", "http://b/odd")
    router = TopicRouter([topic])
    assert router.resolve("/a:b@c/x").path == "/a:b@c/x"
    assert router.resolve("/a%3Ab%40c/x").path == "/a:b@c/x"


def test_template_literal_segments_with_sub_delims() -> None:
    topic = make("odd", "/v1:x/{id}", "http://b/{id}")
    router = TopicRouter([topic])
    assert router.resolve("/v1:x/7").path == "/v1:x/7"
    assert router.resolve("/v1%3Ax/7").path == "/v1:x/7"


def test_instances_are_hashable_and_frozen(router: TopicRouter) -> None:
    got = router.resolve("/orders/1")
    assert {got: 1}[router.resolve("/orders/%31")] == 1
    with pytest.raises(AttributeError):
        got.path = "/x"  # type: ignore[misc]


def test_router_accepts_any_iterable() -> None:
    router = TopicRouter(t for t in (TICKER, ORDERS))
    assert router.resolve("/markets/ticker").topic is TICKER


def test_modules_do_not_import_asyncio() -> None:
    code = (
        "import sys, gateway.config, gateway.topics; sys.exit(1 if 'asyncio' in sys.modules else 0)"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=False, cwd=repo
    )
    assert result.returncode == 0, result.stderr.decode()
