"""limits: client IP behind trusted proxies, connection caps, request size, overload body."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.config import LimitsConfig
from gateway.errors import RequestTooLarge, URITooLong
from gateway.limits import (
    ConnectionLimiter,
    TrustedProxies,
    check_request_size,
    client_ip,
    overload_body,
)


def scope(peer: str | None, xff: list[bytes] | None = None, **extra: Any) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value) for value in xff or []]
    return {
        "type": "http",
        "client": (peer, 51234) if peer is not None else None,
        "headers": headers,
        **extra,
    }


PROXIES = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.7", [], "203.0.113.7"),
        ("203.0.113.7", [b"1.2.3.4"], "203.0.113.7"),  # untrusted peer: XFF ignored
        ("10.0.0.1", [], "10.0.0.1"),  # trusted peer without XFF is itself the client
        ("10.0.0.1", [b"198.51.100.9"], "198.51.100.9"),
        ("10.0.0.1", [b"6.6.6.6, 198.51.100.9"], "198.51.100.9"),  # left of it: spoofable
        ("10.0.0.1", [b"6.6.6.6, 198.51.100.9, 10.1.2.3"], "198.51.100.9"),  # skip trusted
        ("10.0.0.1", [b"6.6.6.6", b"198.51.100.9, 10.9.9.9"], "198.51.100.9"),  # 2 headers
        ("10.0.0.1", [b"10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # all trusted: left-most
        ("10.0.0.1", [b"garbage, 198.51.100.9"], "198.51.100.9"),  # junk left: not reached
        ("10.0.0.1", [b"198.51.100.9, garbage"], "10.0.0.1"),  # junk in the chain: peer
        ("10.0.0.1", [b"198.51.100.9, "], "10.0.0.1"),  # empty hop
        ("10.0.0.1", [b"unknown"], "10.0.0.1"),
        ("10.0.0.1", [b"\xff\xfe"], "10.0.0.1"),
        ("10.0.0.1", [b"198.51.100.9:4711"], "198.51.100.9"),
        ("10.0.0.1", [b"[2001:db9::1]:443"], "2001:db9::1"),
        ("10.0.0.1", [b"2001:db9::1"], "2001:db9::1"),
        ("10.0.0.1", [b"[2001:db9::1"], "10.0.0.1"),
        ("10.0.0.1", [b"1.2.3.4:port"], "10.0.0.1"),
        ("10.0.0.1", [b"::ffff:198.51.100.9"], "198.51.100.9"),  # v4-mapped is v4
        ("2001:db8::5", [b"198.51.100.9"], "198.51.100.9"),
        ("::ffff:10.0.0.1", [b"198.51.100.9"], "198.51.100.9"),
        ("::ffff:203.0.113.7", [], "203.0.113.7"),
        (None, [b"198.51.100.9"], "unix"),  # unix socket, not trusted
    ],
)
def test_client_ip(peer: str | None, xff: list[bytes], expected: str) -> None:
    assert client_ip(scope(peer, xff), PROXIES) == expected


def test_client_ip_accepts_plain_config_entries() -> None:
    config = LimitsConfig.model_validate({"trusted_proxies": ["10.0.0.0/8"]})
    assert client_ip(scope("10.0.0.1", [b"198.51.100.9"]), config.trusted_proxies) == (
        "198.51.100.9"
    )
    assert client_ip(scope("10.0.0.1", [b"198.51.100.9"]), []) == "10.0.0.1"


def test_unix_socket_peers_can_be_trusted() -> None:
    trusted = TrustedProxies(["unix"])
    assert client_ip(scope(None, [b"198.51.100.9"]), trusted) == "198.51.100.9"
    assert client_ip(scope(None), trusted) == "unix"
    assert client_ip(scope("10.0.0.1", [b"198.51.100.9"]), trusted) == "10.0.0.1"


# --------------------------------------------------------------------------- limiter


def test_total_cap() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_ip=10, max_per_subject=10)
    leases = [limiter.try_acquire(f"10.0.0.{n}", None) for n in range(3)]
    assert all(leases)
    assert limiter.try_acquire("10.0.0.9", None) is None
    assert limiter.refused["total"] == 1
    assert leases[0] is not None
    leases[0].release()
    assert limiter.try_acquire("10.0.0.9", None) is not None


def test_per_ip_cap() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_ip=2, max_per_subject=100)
    first = limiter.try_acquire("1.1.1.1", "a")
    assert first
    assert limiter.try_acquire("1.1.1.1", "b")
    assert limiter.try_acquire("1.1.1.1", "c") is None
    assert limiter.try_acquire("2.2.2.2", "c") is not None
    assert limiter.refused == {"total": 0, "ip": 1, "subject": 0}
    first.release()
    assert limiter.try_acquire("1.1.1.1", "c") is not None


def test_per_subject_cap_and_anonymous() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_ip=100, max_per_subject=2)
    assert limiter.try_acquire("1.1.1.1", "dash")
    assert limiter.try_acquire("2.2.2.2", "dash")
    assert limiter.try_acquire("3.3.3.3", "dash") is None  # from any IP
    for n in range(10):
        assert limiter.try_acquire(f"4.4.4.{n}", None)  # public streams: no subject cap
    assert limiter.count_subject("dash") == 2
    assert limiter.total == 12


def test_refusal_counts_nothing() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=10, max_per_subject=1)
    assert limiter.try_acquire("1.1.1.1", "s")
    assert limiter.try_acquire("1.1.1.1", "s") is None
    assert limiter.total == 1
    assert limiter.count_ip("1.1.1.1") == 1


def test_release_is_idempotent_and_exact() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=10, max_per_subject=10)
    lease = limiter.try_acquire("1.1.1.1", "s")
    other = limiter.try_acquire("1.1.1.1", "s")
    assert lease is not None
    assert other is not None
    lease.release()
    lease.release()
    with lease:
        pass  # exiting releases again: still a no-op
    assert limiter.total == 1
    assert limiter.count_ip("1.1.1.1") == 1
    assert limiter.count_subject("s") == 1
    with other:
        pass
    assert limiter.total == 0
    assert limiter._by_ip == {}
    assert limiter._by_subject == {}


def test_counts_stay_exact_under_random_churn() -> None:
    rng = random.Random(7)
    limiter = ConnectionLimiter(max_total=500, max_per_ip=7, max_per_subject=11)
    live: list[Any] = []
    for _ in range(20_000):
        if live and rng.random() < 0.45:
            live.pop(rng.randrange(len(live))).release()
        else:
            lease = limiter.try_acquire(f"ip{rng.randrange(60)}", rng.choice([None, "a", "b"]))
            if lease is not None:
                live.append(lease)
        assert limiter.total == len(live) <= 500
    by_ip: dict[str, int] = {}
    for lease in live:
        by_ip[lease.ip] = by_ip.get(lease.ip, 0) + 1
    assert by_ip == limiter._by_ip
    assert max(by_ip.values()) <= 7
    assert all(limiter.count_subject(s) <= 11 for s in ("a", "b"))


def test_from_config() -> None:
    limiter = ConnectionLimiter.from_config(LimitsConfig())
    assert (limiter.max_total, limiter.max_per_ip, limiter.max_per_subject) == (16384, 1000, 100)


# --------------------------------------------------------------------------- request size

LIMITS = LimitsConfig.model_validate(
    {"max_headers": 8, "max_header_bytes": 1024, "max_url_bytes": 256}
)


def request(
    headers: list[tuple[bytes, bytes]], raw_path: bytes = b"/prices", query: bytes = b""
) -> dict[str, Any]:
    return {"type": "http", "headers": headers, "raw_path": raw_path, "query_string": query}


def test_within_limits_passes() -> None:
    headers = [(b"h%d" % n, b"v") for n in range(8)]
    check_request_size(request(headers, b"/" + b"a" * 200, b"q=" + b"b" * 53), LIMITS)


def test_too_many_headers_is_431() -> None:
    with pytest.raises(RequestTooLarge) as info:
        check_request_size(request([(b"h%d" % n, b"v") for n in range(9)]), LIMITS)
    assert info.value.status == 431


def test_header_bytes_count_names_values_and_four() -> None:
    # One header of name 1 + value v + 4 = 1024 exactly passes; one byte more fails.
    check_request_size(request([(b"x", b"v" * 1019)]), LIMITS)
    with pytest.raises(RequestTooLarge):
        check_request_size(request([(b"x", b"v" * 1020)]), LIMITS)
    with pytest.raises(RequestTooLarge):
        check_request_size(request([(b"a", b"v" * 508), (b"b", b"v" * 508)]), LIMITS)


def test_url_bytes_count_raw_path_and_query() -> None:
    check_request_size(request([], b"/" + b"a" * 255), LIMITS)
    with pytest.raises(URITooLong) as info:
        check_request_size(request([], b"/" + b"a" * 200, b"q" * 56), LIMITS)
    assert info.value.status == 414


def test_url_without_raw_path_uses_path() -> None:
    scope_ = {"type": "http", "headers": [], "path": "/é" * 100, "query_string": b""}
    with pytest.raises(URITooLong):
        check_request_size(scope_, LIMITS)  # 300 bytes once encoded


# --------------------------------------------------------------------------- overload


def test_overload_body_shape_and_bounds() -> None:
    body = overload_body(10_000, 30_000, randint=lambda low, high: high)
    assert body == b": overloaded\nretry: 30000\n\n"
    rng = random.Random(3)
    seen = set()
    for _ in range(500):
        body = overload_body(10_000, 30_000, randint=rng.randint)
        assert body.startswith(b": overloaded\nretry: ")
        assert body.endswith(b"\n\n")
        value = int(body.split(b"retry: ")[1])
        assert 10_000 <= value <= 30_000
        seen.add(value)
    assert len(seen) > 400  # jittered, not one value for everyone


def test_overload_body_with_equal_bounds() -> None:
    assert overload_body(5000, 5000) == b": overloaded\nretry: 5000\n\n"
