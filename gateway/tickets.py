"""One-time stream tickets: keep long-lived tokens out of ``EventSource`` URLs.

``EventSource`` cannot send headers, and a token in a URL leaks into logs, history and
``Referer`` (RFC 9700 forbids access tokens in query strings). So a page first POSTs to the
ticket endpoint with ``Authorization: Bearer <JWT or opaque token>`` and gets back a random
ticket, then opens ``new EventSource("/orders/42?token=t1.<ticket>")``. A ticket:

* is :data:`~gateway.auth.TICKET_PREFIX` + 32 random bytes (``secrets.token_urlsafe``), so
  credential extraction can tell it from a token in the same query parameter;
* is good **once** and for ``ttl_s`` (<= 60 s) after issue; a second redeem, or one after the
  TTL, is 401. An ``EventSource`` that reconnects by itself reuses its URL and so its used
  ticket: the page must open a new ``EventSource`` with a fresh ticket on ``error``;
* carries the issuing principal unchanged: the same subject, the same grants and the same
  ``expires_at`` (the token's ``exp``), so a ticket never outlives or outranks its token;
* cannot be bought with a ticket (the endpoint takes only the Authorization header anyway).

Memory is bounded: tickets are kept in issue order (hence expiry order, the TTL being fixed),
expired ones are dropped from the front on every issue and redeem, and at most
``max_outstanding`` may be live; beyond that issuing fails with 503 rather than growing.
Tickets are stored by sha256, so even a memory dump holds no redeemable ticket.

Sans-IO: time comes from injected clocks (monotonic for the TTL, wall time for ``exp``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.auth import TICKET_PREFIX, Principal
from gateway.errors import ServiceUnavailable, Unauthorized

__all__ = ["DEFAULT_MAX_OUTSTANDING", "TicketStore"]

DEFAULT_MAX_OUTSTANDING = 100_000
# Prefix + 43 base64url characters; anything much longer is not one of ours.
_MAX_TICKET_CHARS = 128


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogatepass")).digest()


class TicketStore:
    """Issued, not yet redeemed tickets of this process."""

    __slots__ = ("_clock", "_max", "_tickets", "_ttl", "_wall")

    def __init__(
        self,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    ) -> None:
        if not 0 < ttl_s <= 60:
            raise ValueError("ttl_s must be in (0, 60]")
        self._ttl = ttl_s
        self._clock = clock
        self._wall = wall_clock
        self._max = max_outstanding
        # digest -> (deadline on `clock`, principal); insertion order == deadline order.
        self._tickets: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def _purge(self, now: float) -> None:
        while self._tickets:
            digest, (deadline, _) = next(iter(self._tickets.items()))
            if deadline > now:
                break
            del self._tickets[digest]

    def _expired(self, principal: Principal) -> bool:
        return principal.expires_at is not None and principal.expires_at <= self._wall()

    def issue(self, principal: Principal) -> str:
        """A new ticket for ``principal``; 401 for a ticket principal or an expired one,
        503 when ``max_outstanding`` tickets are live."""
        if principal.source == "ticket":
            raise Unauthorized("invalid token", why="a ticket cannot buy a ticket")
        if self._expired(principal):
            raise Unauthorized("token expired", why="token expired before the ticket")
        now = self._clock()
        self._purge(now)
        if len(self._tickets) >= self._max:
            raise ServiceUnavailable("too many outstanding tickets, retry shortly")
        ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
        self._tickets[_digest(ticket)] = (now + self._ttl, principal)
        return ticket

    def redeem(self, ticket: str) -> Principal:
        """The principal a ticket was issued to, once; 401 if unknown, used or expired."""
        if not ticket.startswith(TICKET_PREFIX) or len(ticket) > _MAX_TICKET_CHARS:
            raise Unauthorized("invalid token", why="not a ticket")
        now = self._clock()
        # Popped before any check: whatever happens next, it cannot be used again.
        entry = self._tickets.pop(_digest(ticket), None)
        self._purge(now)
        if entry is None:
            raise Unauthorized("invalid token", why="unknown or used ticket")
        deadline, principal = entry
        if now >= deadline:
            raise Unauthorized("token expired", why="ticket expired")
        if self._expired(principal):
            raise Unauthorized("token expired", why="the ticket's token expired")
        return dataclasses.replace(principal, source="ticket")
