"""Per-process bounds: who the client is, how many streams it may hold, request sizes.

* :func:`client_ip`: the TCP peer, unless the peer is a trusted proxy. Then
  ``X-Forwarded-For`` is walked from the right (the hop the trusted proxy itself added),
  skipping trusted hops; the first untrusted address is the client. Everything left of it was
  written by the client and is never believed. A malformed hop on the way means the chain
  cannot be trusted: the peer is used. ``unix`` in ``trusted_proxies`` trusts peers on unix
  sockets (a local reverse proxy); such peers are otherwise reported as ``"unix"``.
* :class:`ConnectionLimiter`: exact counts of open streams in total, per client IP and per
  subject, O(1) per acquire and release; a :class:`Lease` releases once however often it is
  called. Counters that drop to zero are deleted, so memory follows live connections only.
* :func:`check_request_size`: header count, header bytes (names + values + 4 per header, as
  on an HTTP/1.1 wire) and URL bytes (raw path + query), because hypercorn lets a 17 KB
  header and 5,000 fields through.
* :func:`overload_body`: an overloaded gateway must not answer 429 or 5xx (those end an
  ``EventSource`` for good), so it sends 200 with this body (a comment and a jittered
  ``retry:``) and closes: the browser comes back later, and not all at once.

Sans-IO: plain data in, plain data out.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.config import LimitsConfig
from gateway.errors import RequestTooLarge, URITooLong

__all__ = [
    "ConnectionLimiter",
    "Lease",
    "TrustedProxies",
    "check_request_size",
    "client_ip",
    "overload_body",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # "::ffff:1.2.3.4" is 1.2.3.4: one client, one count
    return ip


def _parse_hop(raw: bytes) -> IPAddress | None:
    """One X-Forwarded-For entry: ``1.2.3.4``, ``1.2.3.4:port``, ``::1`` or ``[::1]:port``."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    return _parse_ip(text)


class TrustedProxies:
    """The ``limits.trusted_proxies`` entries, parsed once."""

    __slots__ = ("_networks", "unix")

    def __init__(self, entries: Iterable[str]) -> None:
        entries = list(entries)
        self.unix = "unix" in entries
        self._networks = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "unix"
        ]

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return any(ip in network for network in self._networks)


def client_ip(scope: Mapping[str, Any], trusted_proxies: TrustedProxies | Iterable[str]) -> str:
    """The client's address as text (see the module docstring)."""
    if not isinstance(trusted_proxies, TrustedProxies):
        trusted_proxies = TrustedProxies(trusted_proxies)
    client = scope.get("client")
    peer = _parse_ip(str(client[0])) if client else None
    if peer is None:
        label = "unix"
        if not trusted_proxies.unix:
            return label
    else:
        label = str(peer)
        if peer not in trusted_proxies:
            return label
    hops: list[bytes] = []
    for name, value in scope.get("headers") or ():
        if name.lower() == b"x-forwarded-for":
            hops += value.split(b",")  # several headers form one list, in order
    found = label
    for raw in reversed(hops):
        hop = _parse_hop(raw)
        if hop is None:
            return label
        found = str(hop)
        if hop not in trusted_proxies:
            return found
    return found  # every hop is a trusted proxy: the left-most one is as far as we can see


class Lease:
    """One admitted stream; :meth:`release` (idempotent) gives the slot back."""

    __slots__ = ("_limiter", "ip", "released", "subject")

    def __init__(self, limiter: ConnectionLimiter, ip: str, subject: str | None) -> None:
        self._limiter = limiter
        self.ip = ip
        self.subject = subject
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limiter._release(self.ip, self.subject)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class ConnectionLimiter:
    """Caps open streams in total, per client IP and per subject (None: anonymous)."""

    __slots__ = (
        "_by_ip",
        "_by_subject",
        "max_per_ip",
        "max_per_subject",
        "max_total",
        "refused",
        "total",
    )

    def __init__(self, max_total: int, max_per_ip: int, max_per_subject: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_per_subject = max_per_subject
        self.total = 0
        self._by_ip: dict[str, int] = {}
        self._by_subject: dict[str, int] = {}
        self.refused = {"total": 0, "ip": 0, "subject": 0}  # for metrics

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> ConnectionLimiter:
        return cls(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_connections_per_subject,
        )

    def count_ip(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)

    def count_subject(self, subject: str) -> int:
        return self._by_subject.get(subject, 0)

    def try_acquire(self, ip: str, subject: str | None) -> Lease | None:
        """A lease if every cap has room, else None (nothing is counted then)."""
        if self.total >= self.max_total:
            self.refused["total"] += 1
            return None
        if self._by_ip.get(ip, 0) >= self.max_per_ip:
            self.refused["ip"] += 1
            return None
        if subject is not None and self._by_subject.get(subject, 0) >= self.max_per_subject:
            self.refused["subject"] += 1
            return None
        self.total += 1
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        if subject is not None:
            self._by_subject[subject] = self._by_subject.get(subject, 0) + 1
        return Lease(self, ip, subject)

    def _release(self, ip: str, subject: str | None) -> None:
        self.total -= 1
        _decrement(self._by_ip, ip)
        if subject is not None:
            _decrement(self._by_subject, subject)


def check_request_size(scope: Mapping[str, Any], limits: LimitsConfig) -> None:
    """Raise :class:`RequestTooLarge` (431) or :class:`URITooLong` (414) for an oversized
    request head. Cheap: run it first, before anything parses headers or the path."""
    headers = scope.get("headers") or ()
    if len(headers) > limits.max_headers:
        raise RequestTooLarge(f"more than {limits.max_headers} header fields")
    size = sum(len(name) + len(value) + 4 for name, value in headers)  # ": " and CRLF
    if size > limits.max_header_bytes:
        raise RequestTooLarge(f"header fields larger than {limits.max_header_bytes} bytes")
    raw_path = scope.get("raw_path")
    path_bytes = len(raw_path) if raw_path is not None else len(scope.get("path", "").encode())
    if path_bytes + len(scope.get("query_string") or b"") > limits.max_url_bytes:
        raise URITooLong(f"URL longer than {limits.max_url_bytes} bytes")


def overload_body(
    min_ms: int, max_ms: int, *, randint: Callable[[int, int], int] = random.randint
) -> bytes:
    """The body of a 200 ``text/event-stream`` overload answer: a comment, a ``retry:``
    jittered in ``[min_ms, max_ms]`` (so refused clients do not return in lockstep), and the
    blank line that ends the event. Send it and close."""
    retry = randint(min_ms, max(min_ms, max_ms))
    return b": overloaded\nretry: %d\n\n" % retry
