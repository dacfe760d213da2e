"""Grants and authorization, opaque tokens, credential extraction and query scrubbing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.auth import (
    TICKET_PREFIX,
    Authenticator,
    Credential,
    Principal,
    authorize,
    extract_bearer,
    extract_credential,
    match_digest,
    pattern_matches,
    scrub_query,
)
from gateway.config import AuthConfig, TopicConfig
from gateway.errors import BadRequest, ConfigError, Forbidden, NotFound, Unauthorized
from gateway.topics import TopicInstance, TopicRouter
from tests.test_auth_support import SECRET, gateway_config, instances

DASH_TOKEN = "dash-" + "q" * 40
OPS_TOKEN = "ops-" + "r" * 40
OLD_TOKEN = "old-" + "s" * 40


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def principal(*grants: str) -> Principal:
    return Principal("alice", grants, None, "header")


def fake_instance(topic_name: str, path: str) -> TopicInstance:
    """An instance with a path the router would never produce (to attack the matcher)."""
    topic = next(t for t in gateway_config(None).topics if t.name == topic_name)
    return TopicInstance(topic, path, "http://backend/x", ())


# --------------------------------------------------------------------------- patterns

MATCHES = [
    ("/prices", "/prices", True),
    ("/prices", "/Prices", False),  # case-sensitive
    ("/orders/*", "/orders/42", True),
    ("/orders/*", "/orders/42/items/1", False),  # one segment only
    ("/orders/*", "/orders", False),
    ("/orders/*", "/orders/", False),  # never an empty segment
    ("/orders/*", "/orders/..", False),  # dot segments are not canonical: no match
    ("/orders/*", "/orders/.", False),
    ("/orders/*", "/orders//42", False),
    ("/orders/*/items/*", "/orders/42/items/7", True),
    ("/orders/*/items/*", "/orders/42/items", False),
    ("/orders/**", "/orders/42", True),
    ("/orders/**", "/orders/42/items/7", True),
    ("/orders/**", "/orders", False),  # one or more segments
    ("/orders/**", "/ordersX/1", False),
    ("/orders/**", "/orders/../prices", False),
    ("/**", "/prices", True),
    ("/orders/42", "/orders/42", True),
    ("/orders/42", "/orders/420", False),
    ("/orders/42", "/orders/4", False),
    ("/orders/a%2Fb", "/orders/a%2Fb", True),  # the canonical spelling of a value "a/b"
    ("/orders/*", "/orders/a%2Fb", True),  # ...which is still one segment
    ("/orders/a", "/orders/a%2Fb", False),
    ("/orders/%41", "/orders/A", False),  # patterns compare canonical text, no decoding
    ("/orders/ord*", "/orders/order1", False),  # no partial wildcards: invalid pattern
    ("/orders/**/items", "/orders/1/items", False),  # ** only last: invalid pattern
    ("/orders//*", "/orders/1", False),  # empty segment: invalid pattern
    ("orders", "/orders/1", False),  # a name is not a pattern
    ("/", "/", False),
    ("/reports/*", "/Reports/q1", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCHES)
def test_pattern_matches(pattern: str, path: str, expected: bool) -> None:
    assert pattern_matches(pattern, path) is expected


def test_name_grant_allows_every_instance_of_its_topic() -> None:
    orders, items, prices = instances("/orders/1", "/orders/1/items/2", "/prices")
    assert principal("orders").allows(orders)
    assert not principal("orders").allows(items)  # items is another topic
    assert not principal("orders").allows(prices)
    assert principal("prices").allows(prices)
    assert not principal("Prices").allows(prices)  # names are case-sensitive too


def test_pattern_grant_uses_the_canonical_path_from_the_router() -> None:
    (encoded,) = instances("/orders/%34%32")  # "42", spelled with escapes
    assert encoded.path == "/orders/42"
    assert principal("/orders/42").allows(encoded)
    (spaced,) = instances("/orders/a%20b")
    assert principal("/orders/a%20b").allows(spaced)
    assert not principal("/orders/a b").allows(spaced)


@pytest.mark.parametrize(
    "raw_path",
    ["/orders/..", "/orders/%2e%2e", "/orders/a%2Fb", "/orders/a%2fb", "/orders/a\\b"],
)
def test_router_refuses_the_values_that_could_widen_a_grant(raw_path: str) -> None:
    router = TopicRouter(gateway_config(None).topics)
    with pytest.raises(BadRequest, match="path parameter 'id'"):
        router.resolve(raw_path)


def test_case_tricks_reach_another_topic_or_none() -> None:
    router = TopicRouter(gateway_config(None).topics)
    with pytest.raises(NotFound):
        router.resolve("/ORDERS/42")
    (reports,) = instances("/Reports/q1")
    assert not principal("/reports/*").allows(reports)
    assert principal("/Reports/*").allows(reports)


def test_the_matcher_never_crosses_segments_even_on_odd_instances() -> None:
    # Not producible by the router; the matcher must stay safe regardless.
    crafted = [
        fake_instance("orders", "/orders/42/items/1"),
        fake_instance("orders", "/orders/../prices"),
        fake_instance("orders", "/orders/"),
    ]
    for instance in crafted:
        assert not principal("/orders/*").allows(instance)
    assert principal("orders").allows(crafted[0])  # a name grant is about the topic


# --------------------------------------------------------------------------- authorize


def test_public_topics_need_no_principal() -> None:
    authorize(None, instances("/clock"))
    authorize(principal(), instances("/clock"))
    assert principal().allows(instances("/clock")[0])


def test_no_principal_for_a_private_topic_is_401_without_error_code() -> None:
    with pytest.raises(Unauthorized) as info:
        authorize(None, instances("/clock", "/prices"))
    assert info.value.status == 401
    assert info.value.detail == "missing credentials"
    assert info.value.www_authenticate() == b"Bearer"
    assert (b"cache-control", b"no-store") in info.value.headers()


def test_partial_grants_over_several_instances_are_403() -> None:
    who = Principal("secret-subject-name", ("prices", "/orders/1"), None, "query")
    authorize(who, instances("/prices", "/orders/1", "/clock"))
    with pytest.raises(Forbidden) as info:
        authorize(who, instances("/prices", "/orders/1", "/orders/2"))
    error = info.value
    assert error.status == 403
    assert error.detail == "not granted"
    assert error.www_authenticate() == (
        b'Bearer error="insufficient_scope", error_description="not granted"'
    )
    client_visible = str(error) + error.www_authenticate().decode()
    for leak in ("secret-subject-name", "/orders/1", "prices", "query"):
        assert leak not in client_visible
    assert "secret-subject-name" in error.why  # for the gateway's own log


def test_auth_errors_refuse_free_text_reasons() -> None:
    with pytest.raises(ValueError, match="fixed"):
        Unauthorized("bad token eyJhbGciOi...")
    with pytest.raises(ValueError, match="fixed"):
        Forbidden("you lack /orders/2")
    assert Unauthorized().detail == "invalid token"
    assert Forbidden().detail == "not granted"


# --------------------------------------------------------------------------- opaque tokens


def opaque_config(**auth: Any) -> tuple[AuthConfig, tuple[TopicConfig, ...]]:
    tree: dict[str, Any] = {
        "tokens": [
            {"sha256": sha(DASH_TOKEN), "subject": "dashboard", "topics": ["prices", "/orders/*"]},
            {"sha256": sha(OPS_TOKEN).upper(), "subject": "ops", "topics": ["/**"]},
            {"sha256": sha(OLD_TOKEN), "subject": "old", "topics": [], "expires_at": 2000},
        ],
        **auth,
    }
    config = gateway_config(tree)
    assert config.auth is not None
    return config.auth, config.topics


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_opaque_tokens_authenticate_by_digest() -> None:
    auth_config, topics = opaque_config()
    auth = Authenticator(auth_config, topics, clock=Clock(1000))
    dash = await auth.authenticate(Credential(DASH_TOKEN, "cookie"))
    assert dash == Principal("dashboard", ("prices", "/orders/*"), None, "cookie")
    ops = await auth.authenticate(Credential(OPS_TOKEN, "header"))
    assert ops is not None
    assert ops.subject == "ops"
    authorize(ops, instances("/prices", "/orders/1/items/2"))


@pytest.mark.parametrize(
    "presented",
    [
        sha(DASH_TOKEN),  # the digest itself is not the token
        DASH_TOKEN[:-1],
        DASH_TOKEN + "q",
        DASH_TOKEN.upper(),
        " " + DASH_TOKEN,
        "x",
    ],
    ids=["digest", "truncated", "extended", "upper", "space", "short"],
)
async def test_near_misses_are_unauthorized(presented: str) -> None:
    auth_config, topics = opaque_config()
    auth = Authenticator(auth_config, topics)
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(Credential(presented, "header"))
    assert info.value.detail == "invalid token"


async def test_opaque_token_expiry_uses_the_injected_clock() -> None:
    auth_config, topics = opaque_config()
    clock = Clock(1999.0)
    auth = Authenticator(auth_config, topics, clock=clock)
    old = await auth.authenticate(Credential(OLD_TOKEN, "header"))
    assert old is not None
    assert old.expires_at == 2000
    assert old.seconds_left(1999.5) == 0.5
    clock.now = 2000.0
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(Credential(OLD_TOKEN, "header"))
    assert info.value.detail == "token expired"


class RecordingEntries:
    """A real sequence of entries that records which were looked at."""

    def __init__(self, digests: list[bytes]) -> None:
        self.entries = [Entry(d) for d in digests]
        self.visited: list[int] = []

    def __iter__(self) -> Iterator[Entry]:
        for index, entry in enumerate(self.entries):
            self.visited.append(index)
            yield entry


class Entry:
    def __init__(self, digest: bytes) -> None:
        self.digest = digest


@pytest.mark.parametrize("position", [0, 50, 99, None])
def test_digest_lookup_always_compares_every_entry(position: int | None) -> None:
    digests = [hashlib.sha256(b"token-%d" % n).digest() for n in range(100)]
    wanted = digests[position] if position is not None else hashlib.sha256(b"nope").digest()
    entries = RecordingEntries(digests)
    found = match_digest(wanted, entries)
    assert entries.visited == list(range(100))  # no early exit, wherever the match is
    assert (found is None) is (position is None)
    if position is not None:
        assert found is entries.entries[position]


def test_authenticator_rejects_grants_naming_unknown_topics() -> None:
    auth_config, topics = opaque_config()
    with pytest.raises(ConfigError) as info:
        Authenticator(auth_config, [t for t in topics if t.name != "prices"])
    assert info.value.problems == [
        "auth.tokens[0].topics[0]: expected a configured topic name, got 'prices'"
    ]


async def test_opaque_and_jwt_side_by_side() -> None:
    auth_config, topics = opaque_config(jwt={"algorithms": ["HS256"], "secret": SECRET})
    auth = Authenticator(auth_config, topics)
    from tests.test_auth_support import token

    jwt_principal = await auth.authenticate(Credential(token(SECRET), "header"))
    assert jwt_principal is not None
    assert jwt_principal.subject == "alice"
    opaque = await auth.authenticate(Credential(DASH_TOKEN, "header"))
    assert opaque is not None
    assert opaque.subject == "dashboard"


# --------------------------------------------------------------------------- extraction


def scope(headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "headers": headers or [], "query_string": query}


AUTH = gateway_config({"tokens": [{"sha256": sha(DASH_TOKEN), "subject": "d"}]}).auth
assert AUTH is not None


def extract(headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b"") -> Any:
    assert AUTH is not None
    return extract_credential(scope(headers, query), AUTH)


def test_precedence_header_then_cookie_then_query() -> None:
    bearer = (b"authorization", b"Bearer from-header")
    cookie = (b"cookie", b"sse_token=from-cookie")
    query = b"token=from-query"
    assert extract([bearer, cookie], query) == Credential("from-header", "header")
    assert extract([cookie], query) == Credential("from-cookie", "cookie")
    assert extract([], query) == Credential("from-query", "query")
    assert extract([], b"other=1") is None
    assert extract() is None


def test_first_present_source_decides_even_when_invalid() -> None:
    with pytest.raises(Unauthorized):
        extract([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"cookie", b"sse_token=ok")])
    with pytest.raises(Unauthorized):
        extract([(b"cookie", b"sse_token=")], b"token=ok")


def test_disabled_sources_are_ignored() -> None:
    config = gateway_config(
        {
            "header": False,
            "cookie": None,
            "query_param": "access",
            "tokens": [{"sha256": sha(DASH_TOKEN), "subject": "d"}],
        }
    ).auth
    assert config is not None
    found = extract_credential(
        scope([(b"authorization", b"Basic junk"), (b"cookie", b"sse_token=x")], b"access=q"),
        config,
    )
    assert found == Credential("q", "query")
    assert extract_credential(scope([], b"token=q"), config) is None


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer",
        b"Bearer ",
        b"Basic abc",
        b"Bearer a b",
        b"Bearer abc,def",
        b"Bearer \xff\xfe",
        b"Bearer abc\x00",
        b"Token abc",
        b"",
        b"Bearerabc",
    ],
)
def test_malformed_authorization_is_unauthorized(value: bytes) -> None:
    with pytest.raises(Unauthorized) as info:
        extract([(b"authorization", value)])
    assert info.value.detail == "invalid token"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Bearer abc.def-ghi_jkl~mno+pq/rs==", "abc.def-ghi_jkl~mno+pq/rs=="),
        (b"bearer abc", "abc"),
        (b"BEARER  abc", "abc"),
        (b"  Bearer abc  ", "abc"),
    ],
)
def test_well_formed_authorization(value: bytes, expected: str) -> None:
    assert extract([(b"authorization", value)]) == Credential(expected, "header")


def test_two_authorization_headers_are_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        extract([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer a")])
    assert extract_bearer(scope([(b"Authorization", b"Bearer a")])) == Credential("a", "header")
    assert extract_bearer(scope([(b"cookie", b"sse_token=a")])) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([b"sse_token=abc"], "abc"),
        ([b"a=1; sse_token=abc; b=2"], "abc"),
        ([b'sse_token="abc"'], "abc"),
        ([b"a=1", b"sse_token=abc"], "abc"),  # HTTP/2 may split cookies over headers
        ([b'junk="unterminated; sse_token=abc'], "abc"),  # others' junk is not our problem
        ([b"$Path=/; expires=x; sse_token=abc"], "abc"),  # attribute-like names elsewhere
        ([b"\xff\xfe=\x80; sse_token=abc"], "abc"),
        ([b"sse_token=first; sse_token=second"], "first"),  # most specific path first
        ([b"sse_tokenx=abc; xsse_token=abc"], None),
        ([b';;;==;";=;'], None),
        ([b""], None),
    ],
)
def test_cookie_parsing_is_robust(headers: list[bytes], expected: str | None) -> None:
    found = extract([(b"cookie", value) for value in headers])
    assert found == (Credential(expected, "cookie") if expected is not None else None)


@pytest.mark.parametrize(
    "value",
    [b"sse_token=", b"sse_token", b'sse_token="abc', b"sse_token=a b", b'sse_token=""'],
)
def test_malformed_own_cookie_is_unauthorized(value: bytes) -> None:
    with pytest.raises(Unauthorized):
        extract([(b"cookie", value)])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"token=abc&x=1", Credential("abc", "query")),
        (b"x=1&%74oken=abc", Credential("abc", "query")),  # an escaped name is the same name
        (b"token=a%2Bb", Credential("a+b", "query")),
        (b"token=a+b", Credential("a b", "query")),  # form encoding: '+' is a space
        (b"token", Credential("", "query")),  # present and empty: rejected when verified
        (b"tokens=abc&xtoken=abc", None),
        (b"%ff=1&token=abc", Credential("abc", "query")),
        (b"token=" + TICKET_PREFIX.encode() + b"abc", Credential(TICKET_PREFIX + "abc", "ticket")),
    ],
)
def test_query_extraction(query: bytes, expected: Credential | None) -> None:
    assert extract([], query) == expected


@pytest.mark.parametrize("query", [b"token=a&token=b", b"token=a&token=a", b"token=%ff%fe"])
def test_bad_query_parameter_is_unauthorized(query: bytes) -> None:
    with pytest.raises(Unauthorized):
        extract([], query)


def test_ticket_prefix_is_a_plain_token_when_tickets_are_disabled() -> None:
    config = gateway_config(
        {"tokens": [{"sha256": sha(DASH_TOKEN), "subject": "d"}], "tickets": {"enabled": False}}
    ).auth
    assert config is not None
    found = extract_credential(scope([], b"token=t1.abc"), config)
    assert found == Credential("t1.abc", "query")


async def test_empty_credential_is_unauthorized() -> None:
    assert AUTH is not None
    auth = Authenticator(AUTH, gateway_config(None).topics)
    with pytest.raises(Unauthorized):
        await auth.authenticate(extract([], b"token"))


def test_credential_repr_hides_the_value() -> None:
    text = repr(Credential(DASH_TOKEN, "header"))
    assert DASH_TOKEN not in text
    assert "header" in text


# --------------------------------------------------------------------------- scrub_query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"token=abc", b""),
        (b"a=1&token=abc&b=2", b"a=1&b=2"),
        (b"token=abc&token=def&last_event_id=7", b"last_event_id=7"),
        (b"%74oken=abc&a=%20x", b"a=%20x"),  # other pieces stay byte-identical
        (b"tok%65n=1&b", b"b"),
        (b"token", b""),
        (b"tokens=1&xtoken=2", b"tokens=1&xtoken=2"),
        (b"%ff=1&token=2", b"%ff=1"),
        (b"", b""),
    ],
)
def test_scrub_query(query: bytes, expected: bytes) -> None:
    assert scrub_query(query, "token") == expected


def test_scrubbed_query_never_holds_the_token() -> None:
    secret = "eyJ.secret.value"
    query = f"a=1&token={secret}&b=2&%74oken={secret}".encode()
    assert secret.encode() not in scrub_query(query, "token")


def test_expiry_helper() -> None:
    now = time.time()
    assert Principal("a", (), now + 5, "header").seconds_left(now) == pytest.approx(5)
    assert Principal("a", (), None, "header").seconds_left(now) is None


def test_auth_components_are_sans_io() -> None:
    code = (
        "import sys\n"
        "import gateway.auth, gateway.cors, gateway.limits, gateway.tickets\n"
        "print('asyncio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
