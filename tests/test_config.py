"""Tests for gateway.config: schema, strictness, error lines, YAML loading, ${VAR} expansion."""

from __future__ import annotations

import copy
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.config import (
    GatewayConfig,
    ServerConfig,
    StreamConfig,
    TopicConfig,
    UpstreamConfig,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError

DROP = object()  # marks a key to leave out of a generated topic


def topic(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "orders",
        "path": "/orders/{id}",
        "upstream": "https://backend.internal/orders/{id}/events",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not DROP}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={} if env is None else env)
    return info.value.problems


def tree_problems(tree: dict[str, Any]) -> list[str]:
    return problems(yaml.safe_dump(tree, sort_keys=False))


def parse_tree(tree: dict[str, Any]) -> GatewayConfig:
    return parse_config(yaml.safe_dump(tree, sort_keys=False), env={})


def with_topic(**overrides: Any) -> list[str]:
    return tree_problems({"topics": [topic(**overrides)]})


def with_section(section: str, **values: Any) -> list[str]:
    return tree_problems({section: values, "topics": [topic()]})


FULL = """
server:
  listen: ["0.0.0.0:8443", "[::1]:0", "unix:/run/gw.sock", "fd://3", "gw.example.com:80"]
  tls:
    cert_file: /etc/gw/cert.pem
    key_file: /etc/gw/key.pem
    ca_file: /etc/gw/ca.pem
  workers: 4
stream:
  heartbeat_s: 20
  retry_min_ms: 500
  retry_max_ms: 500
  send_timeout_s: 2.5
  queue_max_events: 10
  queue_max_bytes: 4096
  policy: latest
upstream:
  connect_timeout_s: 3
  stall_timeout_s: 90.5
  backoff_initial_ms: 100
  backoff_max_ms: 5000
  max_line_bytes: 2048
  max_event_bytes: 2048
  headers:
    Authorization: "Bearer ${TOKEN}"
topics:
  - name: orders
    path: /orders/{id}
    upstream: https://backend.internal/orders/{id}/events?since={id}
    public: true
    linger_s: 0
    headers: {X-Tenant: acme}
    params: {id: "[0-9]+"}
    policy: drop_oldest
    queue_max_events: 5
    queue_max_bytes: 2048
    stall_timeout_s: 1
  - name: ticker.v2
    path: /markets/ticker
    upstream: http://10.0.0.5:8080/ticker
    eager: true
"""


# --------------------------------------------------------------------------- happy paths


def test_full_config_parses() -> None:
    config = parse_config(FULL, env={"TOKEN": "s3cret"})

    assert config.server.listen == (
        "0.0.0.0:8443",
        "[::1]:0",
        "unix:/run/gw.sock",
        "fd://3",
        "gw.example.com:80",
    )
    assert config.server.tls is not None
    assert config.server.tls.ca_file == "/etc/gw/ca.pem"
    assert config.server.workers == 4
    assert config.stream.heartbeat_s == 20.0
    assert isinstance(config.stream.heartbeat_s, float)
    assert config.stream.policy == "latest"
    assert config.upstream.headers == {"Authorization": "Bearer s3cret"}
    orders, ticker = config.topics
    assert orders.public is True
    assert orders.linger_s == 0.0
    assert orders.params == {"id": "[0-9]+"}
    assert orders.policy == "drop_oldest"
    assert (orders.queue_max_events, orders.queue_max_bytes) == (5, 2048)
    assert orders.stall_timeout_s == 1.0
    assert orders.param_names == ("id",)
    assert orders.is_template
    assert ticker.eager is True
    assert ticker.param_names == ()
    assert not ticker.is_template


def test_defaults_match_the_documented_schema() -> None:
    config = parse_tree({"topics": [topic()]})

    assert config.server == ServerConfig(listen=("127.0.0.1:8080",), tls=None, workers=1)
    assert config.stream == StreamConfig(
        heartbeat_s=15.0,
        retry_min_ms=1000,
        retry_max_ms=10000,
        send_timeout_s=10.0,
        queue_max_events=1000,
        queue_max_bytes=1048576,
        policy="disconnect",
    )
    assert config.upstream == UpstreamConfig(
        connect_timeout_s=10.0,
        stall_timeout_s=60.0,
        backoff_initial_ms=250,
        backoff_max_ms=30000,
        max_line_bytes=65536,
        max_event_bytes=1048576,
        headers={},
    )
    (only,) = config.topics
    assert only.public is False
    assert only.eager is False
    assert only.linger_s == 30.0
    assert only.headers == {}
    assert only.params == {}
    assert only.policy is None
    assert only.queue_max_events is None
    assert only.queue_max_bytes is None
    assert only.stall_timeout_s is None


def test_yaml_lists_become_tuples() -> None:
    config = parse_config(FULL, env={"TOKEN": "t"})
    assert isinstance(config.server.listen, tuple)
    assert isinstance(config.topics, tuple)


def test_config_objects_are_frozen_all_the_way_down() -> None:
    config = parse_config(FULL, env={"TOKEN": "t"})
    with pytest.raises(ValidationError):
        config.server.workers = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.topics[0].path = "/elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstream.headers["X-Evil"] = "1"
    with pytest.raises(TypeError):
        config.topics[0].params.update(id=".*")
    with pytest.raises(TypeError):
        del config.topics[0].headers["X-Tenant"]


def test_config_is_hashable_picklable_and_copyable() -> None:
    config = parse_config(FULL, env={"TOKEN": "t"})
    assert hash(config) == hash(parse_config(FULL, env={"TOKEN": "t"}))
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config
    merged = {**config.upstream.headers, **config.topics[0].headers}
    merged["X-More"] = "ok"  # merging yields an ordinary, mutable dict


def test_integer_is_accepted_for_a_number() -> None:
    config = parse_tree({"stream": {"heartbeat_s": 5}, "topics": [topic(linger_s=1)]})
    assert config.stream.heartbeat_s == 5.0
    assert config.topics[0].linger_s == 1.0


# --------------------------------------------------------------------------- strict types


def test_unknown_key_at_top_level() -> None:
    assert tree_problems({"topics": [topic()], "colour": "red"}) == ["colour: unknown key"]


def test_unknown_key_in_server() -> None:
    assert with_section("server", colour="red") == ["server.colour: unknown key"]


def test_unknown_key_in_stream() -> None:
    assert with_section("stream", colour="red") == ["stream.colour: unknown key"]


def test_unknown_key_in_topic() -> None:
    assert with_topic(colour="red") == ["topics[0].colour: unknown key"]


def test_missing_required_keys() -> None:
    assert tree_problems({"server": {}}) == ["topics: missing required key"]
    assert with_topic(name=DROP, upstream=DROP) == [
        "topics[0].name: missing required key",
        "topics[0].upstream: missing required key",
    ]
    assert tree_problems({"server": {"tls": {"cert_file": "/c.pem"}}, "topics": [topic()]}) == [
        "server.tls.key_file: missing required key"
    ]


POLICY = "expected one of 'disconnect', 'drop_oldest' or 'latest'"
WORKERS = "expected an integer between 1 and 64"


@pytest.mark.parametrize(
    ("where", "value", "expected", "shown"),
    [
        ("server.workers", "4", WORKERS, "'4'"),
        ("server.workers", True, WORKERS, "true"),
        ("server.workers", 2.0, WORKERS, "2.0"),
        ("stream.retry_min_ms", 1.5, "expected an integer >= 0", "1.5"),
        ("stream.heartbeat_s", "15", "expected a number > 0 and <= 300", "'15'"),
        ("stream.send_timeout_s", False, "expected a number > 0", "false"),
        ("stream.policy", "slow", POLICY, "'slow'"),
        ("server.listen", "127.0.0.1:80", "expected a list", "'127.0.0.1:80'"),
        ("server.tls", "yes", "expected a mapping", "'yes'"),
        ("upstream.headers", ["X-A: b"], "expected a mapping", "['X-A: b']"),
    ],
)
def test_wrong_types_are_rejected_not_coerced(
    where: str, value: object, expected: str, shown: str
) -> None:
    section, key = where.split(".")
    assert with_section(section, **{key: value}) == [f"{where}: {expected}, got {shown}"]


@pytest.mark.parametrize(
    ("key", "value", "expected", "shown"),
    [
        ("public", 1, "expected true or false", "1"),
        ("public", "true", "expected true or false", "'true'"),
        ("eager", "yes", "expected true or false", "'yes'"),
        ("name", 7, "expected a string", "7"),
        ("linger_s", "30", "expected a number >= 0", "'30'"),
        ("headers", ["a"], "expected a mapping", "['a']"),
        ("params", "id=1", "expected a mapping", "'id=1'"),
        ("queue_max_events", "5", "expected an integer >= 1", "'5'"),
        ("policy", "fast", POLICY, "'fast'"),
    ],
)
def test_wrong_topic_types_are_rejected(key: str, value: object, expected: str, shown: str) -> None:
    assert with_topic(**{key: value}) == [f"topics[0].{key}: {expected}, got {shown}"]


def test_wrong_type_inside_a_mapping() -> None:
    assert with_topic(headers={"X-Count": 3}) == [
        "topics[0].headers.X-Count: expected a string, got 3"
    ]


def test_wrong_container_types() -> None:
    assert tree_problems({"server": [1], "topics": [topic()]}) == [
        "server: expected a mapping, got [1]"
    ]
    assert tree_problems({"topics": {"orders": topic()}}) == [
        "topics: expected a list, got {'orders': {'name': 'orders', 'path': '/orders/{id}', 'up..."
    ]
    assert tree_problems({"topics": [topic(), "orders"]}) == [
        "topics[1]: expected a mapping, got 'orders'"
    ]


def test_mapping_keys_must_be_strings() -> None:
    assert problems("topics:\n- {name: a, path: /a, upstream: 'http://b', headers: {1: x}}") == [
        "topics[0].headers[1]: expected a string key, got 1"
    ]


def test_non_finite_numbers_are_rejected() -> None:
    text = "upstream: {connect_timeout_s: .nan}\nstream: {heartbeat_s: .inf}\n"
    text += "topics: [{name: a, path: /a, upstream: 'http://b', linger_s: .inf}]\n"
    assert problems(text) == [
        "stream.heartbeat_s: expected a number > 0 and <= 300, got inf",
        "upstream.connect_timeout_s: expected a number > 0, got nan",
        "topics[0].linger_s: expected a number >= 0, got inf",
    ]


def test_long_values_are_truncated_in_problems() -> None:
    (line,) = with_topic(upstream="ftp://" + "x" * 500)
    assert (
        line == "topics[0].upstream: expected an http or https URL, got 'ftp://" + "x" * 50 + "..."
    )


# --------------------------------------------------------------------------- numeric bounds


@pytest.mark.parametrize(
    ("section", "key", "bad", "good", "expected"),
    [
        ("server", "workers", 0, 1, "an integer between 1 and 64"),
        ("server", "workers", 65, 64, "an integer between 1 and 64"),
        ("stream", "heartbeat_s", 0, 0.001, "a number > 0 and <= 300"),
        ("stream", "heartbeat_s", 300.5, 300, "a number > 0 and <= 300"),
        ("stream", "retry_min_ms", -1, 0, "an integer >= 0"),
        ("stream", "send_timeout_s", 0, 0.1, "a number > 0"),
        ("stream", "queue_max_events", 0, 1, "an integer >= 1"),
        ("stream", "queue_max_bytes", 1023, 1024, "an integer >= 1024"),
        ("upstream", "connect_timeout_s", 0, 1, "a number > 0"),
        ("upstream", "stall_timeout_s", -5, 5, "a number > 0"),
        ("upstream", "backoff_initial_ms", 0, 1, "an integer >= 1"),
        ("upstream", "max_line_bytes", 1000, 1024, "an integer >= 1024"),
    ],
)
def test_numeric_bounds(section: str, key: str, bad: float, good: float, expected: str) -> None:
    assert with_section(section, **{key: bad}) == [
        f"{section}.{key}: expected {expected}, got {bad}"
    ]
    config = parse_tree({section: {key: good}, "topics": [topic()]})
    assert getattr(getattr(config, section), key) == good


@pytest.mark.parametrize(
    ("key", "bad", "expected"),
    [
        ("linger_s", -1, "a number >= 0"),
        ("queue_max_events", 0, "an integer >= 1"),
        ("queue_max_bytes", 1000, "an integer >= 1024"),
        ("stall_timeout_s", 0, "a number > 0"),
    ],
)
def test_topic_numeric_bounds(key: str, bad: int, expected: str) -> None:
    assert with_topic(**{key: bad}) == [f"topics[0].{key}: expected {expected}, got {bad}"]


def test_retry_max_below_retry_min() -> None:
    assert with_section("stream", retry_min_ms=5000, retry_max_ms=100) == [
        "stream.retry_max_ms: expected an integer >= retry_min_ms (5000), got 100"
    ]
    assert parse_tree({"stream": {"retry_max_ms": 999, "retry_min_ms": 999}, "topics": [topic()]})


def test_retry_max_below_the_default_retry_min() -> None:
    assert with_section("stream", retry_max_ms=10) == [
        "stream.retry_max_ms: expected an integer >= retry_min_ms (1000), got 10"
    ]


def test_cross_field_check_is_skipped_when_its_reference_is_invalid() -> None:
    assert with_section("stream", retry_min_ms="5", retry_max_ms=1) == [
        "stream.retry_min_ms: expected an integer >= 0, got '5'"
    ]


def test_upstream_cross_field_bounds() -> None:
    assert with_section("upstream", backoff_initial_ms=500, backoff_max_ms=100) == [
        "upstream.backoff_max_ms: expected an integer >= backoff_initial_ms (500), got 100"
    ]
    assert with_section("upstream", max_line_bytes=4096, max_event_bytes=2048) == [
        "upstream.max_event_bytes: expected an integer >= max_line_bytes (4096), got 2048"
    ]


# --------------------------------------------------------------------------- server


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("localhost", "expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"),
        ("8080", "expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"),
        (":8080", "expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"),
        ("::1:8080", "expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"),
        ("http://h:80", "expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"),
        ("host:65536", "expected a port from 0 to 65535"),
        ("host:-1", "expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N'"),
        ("256.0.0.1:80", "expected a valid IPv4 address"),
        ("1.2.3:80", "expected a valid IPv4 address"),
        ("bad_host:80", "expected a valid hostname"),
        ("-bad.example:80", "expected a valid hostname"),
        ("[::g]:80", "expected an IPv6 address inside '[...]'"),
        ("[127.0.0.1]:80", "expected an IPv6 address inside '[...]'"),
        ("unix:relative.sock", "expected an absolute socket path after 'unix:'"),
        ("unix:", "expected an absolute socket path after 'unix:'"),
        ("fd://", "expected a file descriptor number after 'fd://'"),
        ("fd://-3", "expected a file descriptor number after 'fd://'"),
    ],
)
def test_bad_listen_entries(entry: str, expected: str) -> None:
    assert with_section("server", listen=["127.0.0.1:8080", entry]) == [
        f"server.listen[1]: {expected}, got {entry!r}"
    ]


@pytest.mark.parametrize(
    "entry",
    ["127.0.0.1:0", "0.0.0.0:65535", "[::]:443", "[fe80::1%eth0]:80", "localhost:1", "unix:/s"],
)
def test_good_listen_entries(entry: str) -> None:
    assert parse_tree({"server": {"listen": [entry]}, "topics": [topic()]}).server.listen == (
        entry,
    )


def test_listen_must_not_be_empty() -> None:
    assert with_section("server", listen=[]) == ["server.listen: expected a non-empty list, got []"]


def test_tls_paths_are_not_checked_for_existence() -> None:
    config = parse_tree(
        {"server": {"tls": {"cert_file": "/nope/c.pem", "key_file": "k.pem"}}, "topics": [topic()]}
    )
    assert config.server.tls is not None
    assert config.server.tls.cert_file == "/nope/c.pem"
    assert config.server.tls.ca_file is None
    assert with_section("server", tls={"cert_file": "", "key_file": "k"}) == [
        "server.tls.cert_file: expected a non-empty string, got ''"
    ]


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("section", ["upstream", "topic"])
def test_header_names_must_be_tokens(section: str) -> None:
    headers = {"X Bad": "v", "X-Good": "v", "Bad:Colon": "v"}
    if section == "topic":
        found, where = with_topic(headers=headers), "topics[0].headers"
    else:
        found, where = with_section("upstream", headers=headers), "upstream.headers"
    assert found == [
        f"{where}['X Bad']: expected a header name of HTTP token characters, got 'X Bad'",
        f"{where}['Bad:Colon']: expected a header name of HTTP token characters, got 'Bad:Colon'",
    ]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\0b"])
def test_header_values_refuse_cr_lf_nul(value: str) -> None:
    assert with_topic(headers={"X-Id": value}) == [
        f"topics[0].headers.X-Id: expected a header value without CR, LF or NUL, got {value!r}"
    ]


# --------------------------------------------------------------------------- topics: name & path


@pytest.mark.parametrize("name", ["", "-lead", ".lead", "has space", "x" * 65, "slash/y", "é"])
def test_bad_topic_names(name: str) -> None:
    (line,) = with_topic(name=name)
    assert line.startswith("topics[0].name: expected a name matching [A-Za-z0-9][A-Za-z0-9_.-]")


@pytest.mark.parametrize("name", ["a", "A.b-c_d", "0", "x" * 64])
def test_good_topic_names(name: str) -> None:
    assert parse_tree({"topics": [topic(name=name)]}).topics[0].name == name


LITERAL_SEGMENT = (
    "expected literal segments of unreserved characters, sub-delims, ':' or '@' "
    "(no spaces or %-escapes)"
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("orders", "expected a path starting with '/'"),
        ("/orders?x=1", "expected a path without '?' or '#'"),
        ("/orders#x", "expected a path without '?' or '#'"),
        ("/orders/", "expected a path without a trailing '/'"),
        ("/orders//x", "expected a path without empty segments ('//')"),
        ("/orders/./x", "expected a path without '.' or '..' segments"),
        ("/orders/..", "expected a path without '.' or '..' segments"),
        ("/my orders", LITERAL_SEGMENT),
        ("/orders%2Fx", LITERAL_SEGMENT),
        ("/ördérs", LITERAL_SEGMENT),
        ("/orders/{1d}", "expected {param} names matching [A-Za-z_][A-Za-z0-9_]*"),
        ("/orders/{id", "expected {param} names matching [A-Za-z_][A-Za-z0-9_]*"),
        ("/orders/{id}/{id}", "expected distinct parameter names, {id} repeats"),
    ],
)
def test_bad_paths(path: str, expected: str) -> None:
    assert with_topic(path=path, upstream="http://b/x") == [
        f"topics[0].path: {expected}, got {path!r}"
    ]


@pytest.mark.parametrize("path", ["/orders/x{id}", "/orders/{id}.json", "/{a}{b}"])
def test_param_must_fill_a_whole_segment(path: str) -> None:
    (line,) = with_topic(path=path, upstream="http://b/x")
    assert line.startswith("topics[0].path: expected each {param} to fill a whole path segment")
    assert line.endswith(f", got {path!r}")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/_gateway",
        "/_gateway/x",
        "/_gateway/{id}",
    ],
)
def test_reserved_paths(path: str) -> None:
    upstream = "http://b/{id}" if "{" in path else "http://b/x"
    (line,) = with_topic(path=path, upstream=upstream)
    assert line.startswith("topics[0].path: expected a path not reserved by the gateway (")
    assert line.endswith(f"), got {path!r}")


@pytest.mark.parametrize(
    "path", ["/events/x", "/status2", "/x/healthz", "/a:b@c!$&'()*+,;=-._~", "/{id}"]
)
def test_paths_near_reserved_ones_are_fine(path: str) -> None:
    upstream = "http://b/{id}" if "{" in path else "http://b/x"
    assert parse_tree({"topics": [topic(path=path, upstream=upstream)]}).topics[0].path == path


def test_param_names_in_path_order() -> None:
    config = parse_tree(
        {"topics": [topic(path="/t/{b}/x/{a}", upstream="http://u/{a}/{b}")]},
    )
    assert config.topics[0].param_names == ("b", "a")
    assert [seg.param for seg in config.topics[0].segments] == [None, "b", None, "a"]


# --------------------------------------------------------------------------- topics: upstream


URL_CHARS = "expected a URL of URL characters only (percent-encode the rest)"
PLACEHOLDER_NAMES = "expected {param} placeholders with names matching [A-Za-z_][A-Za-z0-9_]*"
USERINFO = "expected a URL without userinfo (send credentials in headers)"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://x", "expected an http or https URL"),
        ("backend/orders/{id}", "expected an http or https URL"),
        ("ws://backend/{id}", "expected an http or https URL"),
        ("http:///orders/{id}", "expected an http or https URL with a host"),
        ("https://user:pw@backend/{id}", USERINFO),
        ("https://backend/{id}#frag", "expected a URL without a #fragment"),
        ("https://backend/{id}#", "expected a URL without a #fragment"),
        ("https://backend:99999/{id}", "expected an http or https URL with a valid host and port"),
        ("https://backend:0/{id}", "expected a port from 1 to 65535"),
        ("https://[::1/{id}", "expected an http or https URL with a valid host and port"),
        ("https://back end/{id}", URL_CHARS),
        ("https://backend/{id}/%zz", URL_CHARS),
        ("https://backend/{id}/é", URL_CHARS),
        ("https://{id}.backend/x", "expected {param} placeholders only in the URL path or query"),
        ("https://backend/{id}/{1x}", PLACEHOLDER_NAMES),
        ("https://backend/{id}/}", PLACEHOLDER_NAMES),
    ],
)
def test_bad_upstream_urls(url: str, expected: str) -> None:
    assert with_topic(upstream=url) == [f"topics[0].upstream: {expected}, got {url!r}"]


def test_upstream_placeholders_missing_from_url() -> None:
    assert with_topic(path="/o/{id}/{rev}", upstream="https://backend/orders") == [
        "topics[0].upstream: expected exactly the placeholders of path '/o/{id}/{rev}' "
        "(missing {id}, {rev}), got 'https://backend/orders'"
    ]


def test_upstream_placeholders_not_in_path() -> None:
    assert with_topic(path="/orders", upstream="https://backend/{id}?v={v}") == [
        "topics[0].upstream: expected exactly the placeholders of path '/orders' "
        "(unknown {id}, {v}), got 'https://backend/{id}?v={v}'"
    ]


def test_upstream_placeholders_missing_and_unknown() -> None:
    assert with_topic(upstream="https://backend/{oid}") == [
        "topics[0].upstream: expected exactly the placeholders of path '/orders/{id}' "
        "(missing {id}; unknown {oid}), got 'https://backend/{oid}'"
    ]


def test_upstream_placeholders_may_sit_in_query_and_repeat() -> None:
    url = "https://backend/o/{id}?id={id}&x=%7B1%7D"
    assert parse_tree({"topics": [topic(upstream=url)]}).topics[0].upstream == url


# --------------------------------------------------------------------------- topics: params, eager


def test_params_regex_must_compile() -> None:
    assert with_topic(params={"id": "([0-9]+"}) == [
        "topics[0].params.id: expected a valid regular expression "
        "(missing ), unterminated subpattern at position 0), got '([0-9]+'"
    ]


def test_params_keys_must_be_path_params() -> None:
    assert with_topic(params={"id": "[0-9]+", "sku": ".*"}) == [
        "topics[0].params.sku: expected a parameter of path '/orders/{id}', got 'sku'"
    ]


def test_eager_on_a_templated_path() -> None:
    assert with_topic(eager=True) == [
        "topics[0].eager: expected false for a templated path (there is nothing to pre-open), "
        "got true"
    ]
    literal = topic(path="/ticker", upstream="http://b/ticker", eager=True)
    assert parse_tree({"topics": [literal]}).topics[0].eager is True


# --------------------------------------------------------------------------- topic set


def test_duplicate_topic_names() -> None:
    assert tree_problems({"topics": [topic(), topic(path="/other/{id}")]}) == [
        "topics[1].name: duplicates topics[0].name 'orders'"
    ]


def test_duplicate_literal_paths() -> None:
    first = topic(name="a", path="/ticker", upstream="http://b/1")
    second = topic(name="b", path="/ticker", upstream="http://b/2")
    assert tree_problems({"topics": [first, second]}) == [
        "topics[1].path: duplicates topics[0].path '/ticker'"
    ]


def test_same_shape_templates_collide() -> None:
    trees = [
        topic(name="a", path="/x", upstream="http://b/x"),
        topic(name="b", path="/orders/{id}"),
        topic(name="c", path="/orders/new", upstream="http://b/new"),
        topic(name="d", path="/orders/{oid}", upstream="http://b/{oid}"),
    ]
    assert tree_problems({"topics": trees}) == [
        "topics[3].path: duplicates topics[1].path '/orders/{id}'"
    ]


def test_overlapping_but_different_shapes_are_allowed() -> None:
    topics = [
        topic(name="a", path="/a/{x}/c", upstream="http://b/{x}"),
        topic(name="b", path="/a/b/{y}", upstream="http://b/{y}"),
        topic(name="c", path="/a/{x}/{y}", upstream="http://b/{x}/{y}"),
    ]
    assert len(parse_tree({"topics": topics}).topics) == 3


def test_duplicates_are_reported_alongside_other_problems() -> None:
    topics = [
        topic(linger_s=-1),
        topic(path="/orders/{oid}", upstream="http://b/{oid}"),
    ]
    assert tree_problems({"stream": {"workers": 2}, "topics": topics}) == [
        "stream.workers: unknown key",
        "topics[0].linger_s: expected a number >= 0, got -1",
        "topics[1].name: duplicates topics[0].name 'orders'",
        "topics[1].path: duplicates topics[0].path '/orders/{id}'",
    ]


def test_topics_must_not_be_empty() -> None:
    assert tree_problems({"topics": []}) == ["topics: expected a non-empty list, got []"]


def test_direct_construction_checks_duplicates_too() -> None:
    one = TopicConfig(name="a", path="/a", upstream="http://b/a")
    with pytest.raises(ValidationError, match="duplicates topics"):
        GatewayConfig(topics=(one, one))


def test_several_problems_reported_together() -> None:
    text = """
    server:
      workers: '4'
      listen: [nowhere]
    stream:
      colour: red
      retry_min_ms: 10
      retry_max_ms: 5
    topics:
      - name: orders
        path: /orders/x{id}
        upstream: ftp://x
      - name: b
        path: /b/{id}
        upstream: http://b/{x}
        eager: true
    """
    found = problems(textwrap.dedent(text))
    assert found == [
        "server.listen[0]: expected 'host:port', '[v6]:port', 'unix:/abs/path' or 'fd://N', "
        "got 'nowhere'",
        "server.workers: expected an integer between 1 and 64, got '4'",
        "stream.retry_max_ms: expected an integer >= retry_min_ms (10), got 5",
        "stream.colour: unknown key",
        "topics[0].path: expected each {param} to fill a whole path segment, not 'x{id}', "
        "got '/orders/x{id}'",
        "topics[0].upstream: expected an http or https URL, got 'ftp://x'",
        "topics[1].upstream: expected exactly the placeholders of path '/b/{id}' "
        "(missing {id}; unknown {x}), got 'http://b/{x}'",
        "topics[1].eager: expected false for a templated path (there is nothing to pre-open), "
        "got true",
    ]
    assert all("\n" not in line for line in found)


def test_render_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("topics: [{name: a, path: /a, upstream: 'http://b', public: 1, x: 2}]")
    assert info.value.render() == (
        "<config>: 2 problem(s)\n"
        "  topics[0].public: expected true or false, got 1\n"
        "  topics[0].x: unknown key"
    )


# --------------------------------------------------------------------------- YAML loading


def test_duplicate_yaml_keys_are_rejected() -> None:
    text = """\
    topics:
      - name: a
        path: /a
        upstream: http://b/a
        name: b
    server:
      workers: 1
      workers: 2
    topics: []
    """
    assert problems(textwrap.dedent(text)) == [
        "topics[0].name: duplicate key 'name' (line 5, first on line 2)",
        "server.workers: duplicate key 'workers' (line 8, first on line 7)",
        "topics: duplicate key 'topics' (line 9, first on line 1)",
    ]


def test_yaml_merge_keys_still_work() -> None:
    text = """\
    x-common: &common {upstream: "http://b/x", linger_s: 5}
    topics:
      - <<: *common
        name: a
        path: /a
        linger_s: 1
    """
    # The anchor holder is an unknown key; the merge itself produced no duplicate complaint.
    assert problems(textwrap.dedent(text)) == ["x-common: unknown key"]


def test_yaml_syntax_error_has_line_and_column() -> None:
    (line,) = problems("topics:\n  - name: a\n    path: [/a\n  bad: x: y\n")
    assert line.startswith("line 4, column ")
    assert "invalid YAML" in line


def test_yaml_tab_indentation_error_has_line() -> None:
    (line,) = problems("topics:\n\t- name: a\n")
    assert line.startswith("line 2, column 1: invalid YAML:")


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_document(text: str) -> None:
    assert problems(text) == ["the document is empty: expected a mapping with 'topics'"]


@pytest.mark.parametrize(
    ("text", "shown"), [("- a\n- b\n", "['a', 'b']"), ("just text", "'just text'")]
)
def test_top_level_must_be_a_mapping(text: str, shown: str) -> None:
    assert problems(text) == [f"(top level): expected a mapping, got {shown}"]


def test_yaml_tags_cannot_build_python_objects() -> None:
    (line,) = problems("topics: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in line


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(FULL, encoding="utf-8")
    assert load_config(path, env={"TOKEN": "t"}) == parse_config(FULL, env={"TOKEN": "t"})
    assert load_config(str(path), env={"TOKEN": "t"}).server.workers == 4


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ["cannot read the file: No such file or directory"]


def test_load_config_names_the_file_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("topics: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.render().startswith(f"{path}: 1 problem(s)\n")


def test_load_config_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"topics: [{name: caf\xe9}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith("expected UTF-8 text")


# --------------------------------------------------------------------------- ${VAR} expansion

ENV_TOPIC = """\
topics:
  - name: orders
    path: /orders/{{id}}
    upstream: {upstream}
    headers:
      Authorization: "{auth}"
"""


def env_config(auth: str, env: dict[str, str], upstream: str = "http://b/{id}") -> TopicConfig:
    text = ENV_TOPIC.format(auth=auth, upstream=upstream)
    return parse_config(text, env=env).topics[0]


def test_env_variable_is_substituted() -> None:
    got = env_config("Bearer ${BACKEND_TOKEN}", {"BACKEND_TOKEN": "abc"})
    assert got.headers == {"Authorization": "Bearer abc"}


def test_env_default_when_unset_or_empty() -> None:
    assert env_config("${TOKEN:-anon}", {}).headers["Authorization"] == "anon"
    assert env_config("${TOKEN:-anon}", {"TOKEN": ""}).headers["Authorization"] == "anon"
    assert env_config("${TOKEN:-anon}", {"TOKEN": "x"}).headers["Authorization"] == "x"
    assert env_config("${TOKEN:-}", {}).headers["Authorization"] == ""
    assert env_config("${TOKEN}", {"TOKEN": ""}).headers["Authorization"] == ""


def test_double_dollar_is_a_literal_dollar() -> None:
    assert env_config("$${NOT_A_VAR} costs $$5", {}).headers["Authorization"] == (
        "${NOT_A_VAR} costs $5"
    )
    assert env_config("${X:-$$}", {}).headers["Authorization"] == "$"


def test_lone_dollar_is_kept() -> None:
    assert env_config("price $5 and $X", {}).headers["Authorization"] == "price $5 and $X"


def test_missing_variable_names_the_variable_and_key() -> None:
    assert problems(ENV_TOPIC.format(auth="Bearer ${BACKEND_TOKEN}", upstream="http://b/{id}")) == [
        "topics[0].headers.Authorization: environment variable BACKEND_TOKEN is not set"
    ]


def test_missing_variables_are_reported_with_other_problems() -> None:
    text = ENV_TOPIC.format(auth="${A}", upstream="${UPSTREAM}") + "    public: 1\n"
    assert problems(text) == [
        "topics[0].upstream: environment variable UPSTREAM is not set",
        "topics[0].headers.Authorization: environment variable A is not set",
        "topics[0].public: expected true or false, got 1",
    ]


@pytest.mark.parametrize("ref", ["${1X}", "${X", "${X:default}", "${}", "${X-Y}", "${A:-${B}}"])
def test_malformed_references(ref: str) -> None:
    assert problems(ENV_TOPIC.format(auth=ref, upstream="http://b/{id}")) == [
        f"topics[0].headers.Authorization: expected ${{NAME}} or ${{NAME:-default}} after '${{', "
        f"got {ref!r}"
    ]


def test_variable_value_cannot_inject_yaml() -> None:
    text = "server:\n  tls: {cert_file: '${EVIL}', key_file: k}\n"
    text += "topics: [{name: a, path: /a, upstream: 'http://b/a'}]\n"
    evil = "x'}\ntopics: [{name: injected, path: /evil, upstream: 'http://evil/'}]\n# [1, {a: b}]"
    config = parse_config(text, env={"EVIL": evil})
    assert config.server.tls is not None
    assert config.server.tls.cert_file == evil
    assert [t.name for t in config.topics] == ["a"]


def test_variable_values_are_not_expanded_again() -> None:
    got = env_config("${A}", {"A": "${B}", "B": "nope"})
    assert got.headers["Authorization"] == "${B}"


def test_keys_and_non_strings_are_not_interpolated() -> None:
    text = (
        "topics:\n  - name: a\n    path: /a\n    upstream: http://b/a\n    headers: {'X-${K}': v}\n"
    )
    assert problems(text, {"K": "Id"}) == [
        "topics[0].headers['X-${K}']: expected a header name of HTTP token characters, got 'X-${K}'"
    ]


def test_variables_in_list_items_and_typed_fields() -> None:
    text = "server:\n  listen: ['${HOST}:8080']\n  workers: '${N}'\n"
    text += "topics: [{name: a, path: /a, upstream: 'http://b/a'}]\n"
    # A variable always yields a string, so it cannot stand in for a number (strict types).
    assert problems(text, {"HOST": "0.0.0.0", "N": "4"}) == [
        "server.workers: expected an integer between 1 and 64, got '4'"
    ]
    config = parse_config(text.replace("  workers: '${N}'\n", ""), env={"HOST": "0.0.0.0"})
    assert config.server.listen == ("0.0.0.0:8080",)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_TOKEN", "from-os")
    text = ENV_TOPIC.format(auth="${GW_TEST_TOKEN}", upstream="http://b/{id}")
    assert parse_config(text).topics[0].headers["Authorization"] == "from-os"
