"""The auth and limits sections of the configuration: defaults and every rejection, with
the dotted-path error lines `sse-gateway check` prints."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import GatewayConfig, LimitsConfig, parse_config, short_repr
from gateway.errors import ConfigError
from tests.test_auth_support import EC_KEY, ED_KEY, RSA_KEY, SECRET, TOPICS, write_pem

DIGEST = hashlib.sha256(b"dashboard-token").hexdigest()
TOKENS = [{"sha256": DIGEST, "subject": "dashboard", "topics": ["prices"]}]


def parse(auth: Any = None, limits: Any = None, env: dict[str, str] | None = None) -> GatewayConfig:
    tree: dict[str, Any] = {"topics": TOPICS}
    if auth is not None:
        tree["auth"] = auth
    if limits is not None:
        tree["limits"] = limits
    return parse_config(yaml.safe_dump(tree, sort_keys=False), env=env or {})


def problems(auth: Any = None, limits: Any = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(auth, limits, env)
    return info.value.problems


def jwt_problems(**jwt: Any) -> list[str]:
    return problems({"jwt": jwt})


# --------------------------------------------------------------------------- accepted


def test_without_auth_everything_is_public_and_limits_default() -> None:
    config = parse()
    assert config.auth is None
    assert config.limits == LimitsConfig()
    assert config.limits.max_connections == 16384
    assert config.limits.max_connections_per_ip == 1000
    assert config.limits.max_connections_per_subject == 100
    assert config.limits.trusted_proxies == ()
    assert (config.limits.max_header_bytes, config.limits.max_headers) == (8192, 64)
    assert config.limits.max_url_bytes == 4096
    assert (config.limits.overload_retry_min_ms, config.limits.overload_retry_max_ms) == (
        10000,
        30000,
    )


def test_auth_defaults() -> None:
    auth = parse({"tokens": TOKENS}).auth
    assert auth is not None
    assert auth.header is True
    assert auth.cookie == "sse_token"
    assert auth.query_param == "token"
    assert auth.jwt is None
    assert auth.tickets.enabled
    assert auth.tickets.ttl_s == 30
    assert auth.tickets.path == "/_gateway/ticket"
    assert auth.cors.allowed_origins == ()
    assert auth.cors.allow_credentials
    assert auth.cors.max_age_s == 600
    assert auth.tokens[0].expires_at is None


def test_jwt_defaults() -> None:
    auth = parse({"jwt": {"algorithms": ["HS256"], "secret": SECRET}}).auth
    assert auth is not None
    assert auth.jwt is not None
    jwt = auth.jwt
    assert (jwt.jwks_refresh_s, jwt.jwks_cooldown_s, jwt.jwks_timeout_s) == (300, 30, 5)
    assert (jwt.issuer, jwt.audience, jwt.typ) == (None, None, None)
    assert jwt.leeway_s == 30
    assert (jwt.topics_claim, jwt.subject_claim) == ("topics", "sub")
    assert jwt.is_hmac


def test_full_example(tmp_path: Path) -> None:
    rsa_file = write_pem(tmp_path, "rsa.pem", RSA_KEY.public_key())
    ec_file = write_pem(tmp_path, "ec.pem", EC_KEY.public_key())
    text = textwrap.dedent(
        f"""
        topics:
          - {{name: prices, path: /prices, upstream: "http://b/p"}}
          - {{name: orders, path: "/orders/{{id}}", upstream: "http://b/o/{{id}}"}}
        auth:
          header: true
          cookie: __Host-sse
          query_param: access_token
          tokens:
            - sha256: "{DIGEST.upper()}"
              subject: dashboard
              topics: [prices, "/orders/*", "/orders/**"]
              expires_at: 1900000000
          jwt:
            algorithms: [RS256, PS256, ES256]
            public_key_files: ["{rsa_file}", "{ec_file}"]
            jwks_url: https://idp.example.com/.well-known/jwks.json
            jwks_refresh_s: 600
            jwks_cooldown_s: 10
            jwks_timeout_s: 2.5
            issuer: https://idp.example.com
            audience: sse-gateway
            typ: at+jwt
            leeway_s: 0
            topics_claim: streams
            subject_claim: client_id
          tickets: {{enabled: true, ttl_s: 10, path: /_gateway/tickets/new}}
          cors:
            allowed_origins: ["https://app.example.com", "https://*.example.org:8443"]
            allow_credentials: true
            max_age_s: 0
        limits:
          max_connections: 5
          max_connections_per_ip: 2
          max_connections_per_subject: 1
          trusted_proxies: ["10.0.0.0/8", "fd00::/8", unix]
          max_header_bytes: 4096
          max_headers: 32
          max_url_bytes: 2048
          overload_retry_min_ms: 0
          overload_retry_max_ms: 0
        """
    )
    config = parse_config(text, env={})
    auth = config.auth
    assert auth is not None
    assert auth.jwt is not None
    assert auth.tokens[0].sha256 == DIGEST  # normalised to lower case
    assert auth.jwt.audience == ("sse-gateway",)  # a string becomes a one-item tuple
    assert auth.jwt.public_key_files == (rsa_file, ec_file)
    assert config.limits.trusted_proxies == ("10.0.0.0/8", "fd00::/8", "unix")
    hash(config)  # frozen all the way down


def test_secret_from_the_environment() -> None:
    auth = parse(
        {"jwt": {"algorithms": ["HS384"], "secret": "${JWT_SECRET}"}},
        env={"JWT_SECRET": "e" * 48},
    ).auth
    assert auth is not None
    assert auth.jwt is not None
    assert auth.jwt.secret == "e" * 48
    assert problems({"jwt": {"algorithms": ["HS256"], "secret": "${JWT_SECRET}"}}) == [
        "auth.jwt.secret: environment variable JWT_SECRET is not set"
    ]


def test_audience_list_and_wildcard_origin_without_credentials() -> None:
    auth = parse(
        {
            "tokens": TOKENS,
            "jwt": {
                "algorithms": ["EdDSA"],
                "jwks_url": "http://idp:8080/jwks",
                "audience": ["a", "b"],
            },
            "cors": {"allowed_origins": ["*"], "allow_credentials": False},
        }
    ).auth
    assert auth is not None
    assert auth.jwt is not None
    assert auth.jwt.audience == ("a", "b")
    assert auth.cors.allowed_origins == ("*",)


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize(
    ("algorithms", "expected"),
    [
        (
            ["HS256", "RS256"],
            "auth.jwt.algorithms: expected one algorithm family: all HS*, or only "
            "RS*/PS*/ES*/EdDSA, got ['HS256', 'RS256']",
        ),
        (
            ["ES256", "HS512"],
            "auth.jwt.algorithms: expected one algorithm family: all HS*, or only "
            "RS*/PS*/ES*/EdDSA, got ['ES256', 'HS512']",
        ),
        (
            [],
            "auth.jwt.algorithms: expected a non-empty list, got []",
        ),
    ],
)
def test_algorithm_families(algorithms: list[str], expected: str) -> None:
    assert expected in jwt_problems(algorithms=algorithms, secret=SECRET)


@pytest.mark.parametrize("name", ["none", "None", "NONE", "nOnE"])
def test_none_is_rejected(name: str) -> None:
    assert jwt_problems(algorithms=["HS256", name], secret=SECRET) == [
        f"auth.jwt.algorithms[1]: expected a signing algorithm ('none' is never accepted), "
        f"got '{name}'"
    ]


@pytest.mark.parametrize("name", ["HS1024", "hs256", "RSA", "ES521", "Ed25519", ""])
def test_unknown_algorithms_are_rejected(name: str) -> None:
    (problem,) = jwt_problems(algorithms=[name], secret=SECRET)
    assert problem.startswith("auth.jwt.algorithms[0]: expected one of HS256, HS384, HS512, ")
    assert problem.endswith(f"got '{name}'")


# --------------------------------------------------------------------------- keys


def test_hmac_needs_a_secret() -> None:
    assert jwt_problems(algorithms=["HS256"]) == [
        "auth.jwt.secret: expected a secret of at least 32 bytes for HS* algorithms"
    ]


@pytest.mark.parametrize(
    ("algorithms", "length", "need"),
    [(["HS256"], 31, 32), (["HS384"], 47, 48), (["HS512"], 63, 64), (["HS256", "HS512"], 40, 64)],
)
def test_short_secrets_are_rejected_without_showing_them(
    algorithms: list[str], length: int, need: int
) -> None:
    secret = "Zq" * (length // 2) + "Z" * (length % 2)
    found = jwt_problems(algorithms=algorithms, secret=secret)
    assert found == [
        f"auth.jwt.secret: expected a secret of at least {need} bytes, got {length} bytes"
    ]
    assert not any(secret[:8] in line for line in found)


def test_secret_length_counts_bytes_not_characters() -> None:
    parse({"jwt": {"algorithms": ["HS256"], "secret": "é" * 16}})  # 32 bytes in UTF-8


def test_non_string_secret_is_not_echoed() -> None:
    assert jwt_problems(algorithms=["HS256"], secret=1234567890123) == [
        "auth.jwt.secret: expected a string (value not shown)"
    ]


def test_asymmetric_rejects_a_secret_and_needs_a_key() -> None:
    assert jwt_problems(algorithms=["RS256"], secret=SECRET) == [
        "auth.jwt.secret: expected no secret with asymmetric algorithms "
        "(use public_key_files or jwks_url)",
        "auth.jwt.jwks_url: expected a JWKS URL or public_key_files: asymmetric algorithms "
        "need a key, got null",
    ]
    assert jwt_problems(algorithms=["ES256"]) == [
        "auth.jwt.jwks_url: expected a JWKS URL or public_key_files: asymmetric algorithms "
        "need a key, got null",
    ]


def test_hmac_rejects_public_keys_and_jwks(tmp_path: Path) -> None:
    key_file = write_pem(tmp_path, "k.pem", RSA_KEY.public_key())
    assert jwt_problems(
        algorithms=["HS256"], secret=SECRET, public_key_files=[key_file], jwks_url="https://i/j"
    ) == [
        "auth.jwt.public_key_files: expected no public key files with HS* algorithms "
        f"(they use secret), got {short_repr([key_file])}",
        "auth.jwt.jwks_url: expected null with HS* algorithms (a JWKS holds public keys), "
        "got 'https://i/j'",
    ]


def test_public_key_files_must_be_pem_public_keys(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    private = tmp_path / "private.pem"
    private.write_bytes(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    small = write_pem(tmp_path, "small.pem", rsa.generate_private_key(65537, 1024).public_key())
    ec_file = write_pem(tmp_path, "ec.pem", EC_KEY.public_key())
    ed_file = write_pem(tmp_path, "ed.pem", ED_KEY.public_key())
    good = write_pem(tmp_path, "good.pem", RSA_KEY.public_key())
    found = jwt_problems(
        algorithms=["RS256", "PS256"],
        public_key_files=[missing, str(garbage), str(private), small, ec_file, ed_file, good],
    )
    assert found == [
        "auth.jwt.public_key_files[0]: expected a PEM public key file (cannot read it: No such "
        f"file or directory), got {short_repr(missing)}",
        f"auth.jwt.public_key_files[1]: expected a PEM public key file (not a PEM public key), "
        f"got {short_repr(str(garbage))}",
        "auth.jwt.public_key_files[2]: expected a PEM public key file (it holds a private key; "
        f"give the public key only), got {short_repr(str(private))}",
        "auth.jwt.public_key_files[3]: expected a PEM public key file (RSA keys need at least "
        f"2048 bits, this one has 1024), got {short_repr(small)}",
        "auth.jwt.public_key_files[4]: expected a key for RS256, PS256 (this is an EC "
        f"secp256r1 key), got {short_repr(ec_file)}",
        "auth.jwt.public_key_files[5]: expected a key for RS256, PS256 (this is a "
        f"Ed25519PublicKey), got {short_repr(ed_file)}",
    ]


def test_matching_keys_per_family(tmp_path: Path) -> None:
    parse(
        {
            "jwt": {
                "algorithms": ["ES256", "EdDSA"],
                "public_key_files": [
                    write_pem(tmp_path, "ec.pem", EC_KEY.public_key()),
                    write_pem(tmp_path, "ed.pem", ED_KEY.public_key()),
                ],
            }
        }
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://idp/jwks", "expected an http or https URL"),
        (
            "https://user:pw@idp/jwks",
            "expected a URL without userinfo (send credentials in headers)",
        ),
        ("https://idp/{tenant}/jwks", "expected a URL without {placeholders}"),
        ("https://idp/jwks#frag", "expected a URL without a #fragment"),
        ("jwks.json", "expected an http or https URL"),
    ],
)
def test_jwks_url_shape(url: str, expected: str) -> None:
    assert jwt_problems(algorithms=["RS256"], jwks_url=url) == [
        f"auth.jwt.jwks_url: {expected}, got '{url}'"
    ]


# --------------------------------------------------------------------------- numbers and claims


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("leeway_s", 61, "expected a number between 0 and 60, got 61"),
        ("leeway_s", -1, "expected a number between 0 and 60, got -1"),
        ("leeway_s", "30", "expected a number between 0 and 60, got '30'"),
        ("jwks_timeout_s", 61, "expected a number > 0 and <= 60, got 61"),
        ("jwks_refresh_s", 0, "expected a number > 0, got 0"),
        ("jwks_cooldown_s", -1, "expected a number >= 0, got -1"),
        ("audience", [], "expected a string or a non-empty list of strings, got []"),
        ("audience", 5, "expected a string or a list of strings, got 5"),
        ("issuer", "", "expected a non-empty string, got ''"),
        ("typ", "", "expected a non-empty string, got ''"),
        ("topics_claim", "", "expected a non-empty string, got ''"),
        ("subject_claim", 7, "expected a non-empty string, got 7"),
    ],
)
def test_jwt_scalars(key: str, value: Any, expected: str) -> None:
    assert jwt_problems(algorithms=["HS256"], secret=SECRET, **{key: value}) == [
        f"auth.jwt.{key}: {expected}"
    ]


def test_unknown_keys_are_rejected() -> None:
    assert jwt_problems(algorithms=["HS256"], secret=SECRET, verify=False) == [
        "auth.jwt.verify: unknown key"
    ]
    assert problems({"tokens": TOKENS, "jku": True}) == ["auth.jku: unknown key"]
    assert problems(limits={"max_conn": 1}) == ["limits.max_conn: unknown key"]


# --------------------------------------------------------------------------- opaque tokens


@pytest.mark.parametrize(
    "digest",
    ["abc", "g" * 64, DIGEST[:-1], DIGEST + "0", "dashboard-token", ""],
)
def test_bad_sha256(digest: str) -> None:
    assert problems({"tokens": [{"sha256": digest, "subject": "x"}]}) == [
        "auth.tokens[0].sha256: expected 64 hex digits (the sha256 of the token, never the "
        f"token), got {short_repr(digest)}"
    ]


def test_token_entries_need_a_subject_and_distinct_digests() -> None:
    assert problems({"tokens": [{"sha256": DIGEST}]}) == [
        "auth.tokens[0].subject: missing required key"
    ]
    assert problems(
        {"tokens": [{"sha256": DIGEST, "subject": "a"}, {"sha256": DIGEST.upper(), "subject": "b"}]}
    ) == ["auth.tokens[1].sha256: duplicates auth.tokens[0].sha256"]


def test_token_expiry_is_a_positive_number() -> None:
    assert problems({"tokens": [{"sha256": DIGEST, "subject": "a", "expires_at": "soon"}]}) == [
        "auth.tokens[0].expires_at: expected a number > 0, got 'soon'"
    ]


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        ("nope", "expected a configured topic name or a path pattern starting with '/'"),
        ("Prices", "expected a configured topic name or a path pattern starting with '/'"),
        ("/nowhere/*", "expected a path pattern matching some configured topic path"),
        ("/orders/*/*", "expected a path pattern matching some configured topic path"),
        ("/prices/**", "expected a path pattern matching some configured topic path"),
        ("orders/*", "expected a topic name or a path pattern starting with '/'"),
        ("/orders/ord*", "expected '*' and '**' only as whole segments"),
        ("/orders/**/items", "expected '**' only as the last segment"),
        ("/orders//x", "expected a path pattern without empty segments"),
        ("/", "expected a path pattern without empty segments"),
        ("/orders/..", "expected a path pattern without '.' or '..' segments"),
        (
            "/orders/a b",
            "expected pattern segments of URL path characters (as in the canonical path)",
        ),
        (
            "/orders/%zz",
            "expected pattern segments of URL path characters (as in the canonical path)",
        ),
    ],
)
def test_bad_grants(grant: str, expected: str) -> None:
    found = problems({"tokens": [{"sha256": DIGEST, "subject": "a", "topics": ["prices", grant]}]})
    assert found == [f"auth.tokens[0].topics[1]: {expected}, got '{grant}'"]


@pytest.mark.parametrize(
    "grant",
    [
        "prices",
        "orders",
        "/prices",
        "/orders/*",
        "/orders/42",
        "/orders/%20",
        "/orders/**",
        "/**",
        "/orders/*/items/*",
        "/*",
    ],
)
def test_good_grants(grant: str) -> None:
    parse({"tokens": [{"sha256": DIGEST, "subject": "a", "topics": [grant]}]})


# --------------------------------------------------------------------------- sources and tickets


def test_something_must_verify() -> None:
    assert problems({}) == [
        "auth.jwt: expected a jwt section or entries in auth.tokens (nothing verifies), got null"
    ]


def test_some_credential_source_must_be_enabled() -> None:
    assert problems(
        {
            "tokens": TOKENS,
            "header": False,
            "cookie": None,
            "query_param": None,
            "tickets": {"enabled": False},
        }
    ) == [
        "auth.query_param: expected a name: with header false and cookie null nothing is "
        "accepted, got null"
    ]


def test_tickets_need_the_query_parameter() -> None:
    assert problems({"tokens": TOKENS, "query_param": None}) == [
        "auth.tickets.enabled: expected false when auth.query_param is null (tickets travel "
        "in it), got true"
    ]
    parse({"tokens": TOKENS, "query_param": None, "tickets": {"enabled": False}})


@pytest.mark.parametrize(
    ("tickets", "expected"),
    [
        ({"ttl_s": 61}, "auth.tickets.ttl_s: expected a number between 1 and 60, got 61"),
        ({"ttl_s": 0}, "auth.tickets.ttl_s: expected a number between 1 and 60, got 0"),
        ({"path": "/ticket"}, "auth.tickets.path: expected a path under /_gateway/, got '/ticket'"),
        (
            {"path": "/_gateway/"},
            "auth.tickets.path: expected a path under /_gateway/, got '/_gateway/'",
        ),
        ({"enabled": "yes"}, "auth.tickets.enabled: expected true or false, got 'yes'"),
    ],
)
def test_ticket_settings(tickets: dict[str, Any], expected: str) -> None:
    assert problems({"tokens": TOKENS, "tickets": tickets}) == [expected]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("cookie", "sse token", "expected a cookie name of HTTP token characters"),
        ("cookie", "", "expected a cookie name of HTTP token characters"),
        ("query_param", "to ken", "expected a parameter name of [A-Za-z0-9._~-], 1 to 64"),
        ("query_param", "t&x", "expected a parameter name of [A-Za-z0-9._~-], 1 to 64"),
        ("header", "true", "expected true or false"),
    ],
)
def test_source_names(key: str, value: Any, expected: str) -> None:
    assert problems({"tokens": TOKENS, key: value}) == [f"auth.{key}: {expected}, got {value!r}"]


# --------------------------------------------------------------------------- CORS


def test_star_origin_with_credentials_is_rejected() -> None:
    assert problems(
        {"tokens": TOKENS, "cors": {"allowed_origins": ["https://a.example.com", "*"]}}
    ) == [
        "auth.cors.allowed_origins[1]: expected explicit origins when allow_credentials is true "
        "('*' trusts any site), got '*'"
    ]


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com/",
        "https://app.example.com/path",
        "app.example.com",
        "ftp://app.example.com",
        "https://*.com",
        "https://a.*.example.com",
        "https://*example.com",
        "https://app.example.com:99999",
        "https://*.[::1]",
        "https://exa mple.com",
    ],
)
def test_bad_origins(origin: str) -> None:
    assert problems({"tokens": TOKENS, "cors": {"allowed_origins": [origin]}}) == [
        "auth.cors.allowed_origins[0]: expected '*', 'scheme://host[:port]' or "
        "'scheme://*.domain[:port]' (http or https), without a path, "
        f"got '{origin}'"
    ]


def test_null_origin_is_rejected() -> None:
    assert problems({"tokens": TOKENS, "cors": {"allowed_origins": ["null"]}}) == [
        "auth.cors.allowed_origins[0]: expected a real origin ('null' comes from sandboxes and "
        "files: anyone), got 'null'"
    ]


def test_max_age_bounds() -> None:
    assert problems({"tokens": TOKENS, "cors": {"max_age_s": 86401}}) == [
        "auth.cors.max_age_s: expected an integer between 0 and 86400, got 86401"
    ]


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (
            {"trusted_proxies": ["10.0.0.1/8"]},
            "limits.trusted_proxies[0]: expected a CIDR like 10.0.0.0/8 or 2001:db8::/32, "
            "or 'unix', got '10.0.0.1/8'",
        ),
        (
            {"trusted_proxies": ["proxy.internal"]},
            "limits.trusted_proxies[0]: expected a CIDR like 10.0.0.0/8 or 2001:db8::/32, "
            "or 'unix', got 'proxy.internal'",
        ),
        (
            {"overload_retry_min_ms": 5000, "overload_retry_max_ms": 4000},
            "limits.overload_retry_max_ms: expected an integer >= overload_retry_min_ms (5000), "
            "got 4000",
        ),
        ({"max_connections": 0}, "limits.max_connections: expected an integer >= 1, got 0"),
        (
            {"max_connections_per_ip": "200"},
            "limits.max_connections_per_ip: expected an integer >= 1, got '200'",
        ),
        (
            {"max_headers": 7},
            "limits.max_headers: expected an integer between 8 and 1000, got 7",
        ),
        (
            {"max_header_bytes": 100},
            "limits.max_header_bytes: expected an integer between 1024 and 1048576, got 100",
        ),
        (
            {"max_url_bytes": 10**6},
            "limits.max_url_bytes: expected an integer between 256 and 65536, got 1000000",
        ),
    ],
)
def test_limits_rejections(limits: dict[str, Any], expected: str) -> None:
    assert problems(limits=limits) == [expected]


def test_single_host_cidrs_are_fine() -> None:
    config = parse(limits={"trusted_proxies": ["192.0.2.1", "192.0.2.1/32", "::1"]})
    assert config.limits.trusted_proxies == ("192.0.2.1", "192.0.2.1/32", "::1")


def test_problems_in_several_sections_are_all_reported() -> None:
    found = problems(
        {"tokens": TOKENS, "jwt": {"algorithms": ["none"]}, "cors": {"max_age_s": -1}},
        {"max_connections": 0},
    )
    assert found == [
        "auth.jwt.algorithms[0]: expected a signing algorithm ('none' is never accepted), "
        "got 'none'",
        "auth.cors.max_age_s: expected an integer between 0 and 86400, got -1",
        "limits.max_connections: expected an integer >= 1, got 0",
    ]
