"""TicketStore: single use, TTL, token expiry, bounded memory; and the Authenticator's
ticket flow (issue with a bearer token, redeem from the query parameter)."""

from __future__ import annotations

import time

import pytest

from gateway.auth import TICKET_PREFIX, Authenticator, Credential, Principal, extract_credential
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.tickets import DEFAULT_MAX_OUTSTANDING, TicketStore
from tests.test_auth_support import SECRET, gateway_config, token


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ALICE = Principal("alice", ("prices", "/orders/*"), 5000.0, "header")


def store(
    ttl: float = 30.0, max_outstanding: int = DEFAULT_MAX_OUTSTANDING
) -> tuple[TicketStore, Clock, Clock]:
    mono, wall = Clock(100.0), Clock(1000.0)
    tickets = TicketStore(ttl, mono, wall_clock=wall, max_outstanding=max_outstanding)
    return tickets, mono, wall


def test_ticket_shape() -> None:
    tickets, _, _ = store()
    first, second = tickets.issue(ALICE), tickets.issue(ALICE)
    assert first.startswith(TICKET_PREFIX)
    assert second.startswith(TICKET_PREFIX)
    assert first != second
    assert len(first) == len(TICKET_PREFIX) + 43  # 32 random bytes, base64url
    assert set(first[len(TICKET_PREFIX) :]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )


def test_redeem_once_with_the_issuers_grants_and_expiry() -> None:
    tickets, _, _ = store()
    ticket = tickets.issue(ALICE)
    redeemed = tickets.redeem(ticket)
    assert redeemed == Principal("alice", ("prices", "/orders/*"), 5000.0, "ticket")
    with pytest.raises(Unauthorized) as info:
        tickets.redeem(ticket)
    assert info.value.detail == "invalid token"
    assert len(tickets) == 0


def test_ttl_is_enforced_with_the_injected_clock() -> None:
    tickets, mono, _ = store(ttl=30.0)
    ticket = tickets.issue(ALICE)
    mono.now += 29.999
    assert tickets.redeem(ticket).subject == "alice"
    late = tickets.issue(ALICE)
    mono.now += 30.0
    with pytest.raises(Unauthorized) as info:
        tickets.redeem(late)
    assert info.value.detail == "token expired"
    with pytest.raises(Unauthorized):
        tickets.redeem(late)  # and it is gone


def test_a_ticket_never_outlives_its_token() -> None:
    tickets, _, wall = store()
    ticket = tickets.issue(ALICE)
    wall.now = 5000.0  # the token's exp passes while the ticket is still fresh
    with pytest.raises(Unauthorized) as info:
        tickets.redeem(ticket)
    assert info.value.detail == "token expired"
    with pytest.raises(Unauthorized):
        tickets.issue(ALICE)  # nor is one issued for an expired token


def test_a_ticket_cannot_buy_a_ticket() -> None:
    tickets, _, _ = store()
    redeemed = tickets.redeem(tickets.issue(ALICE))
    with pytest.raises(Unauthorized):
        tickets.issue(redeemed)


@pytest.mark.parametrize(
    "bogus",
    ["", "t1.", "t1.nope", "x" * 10, TICKET_PREFIX + "A" * 500, "eyJhbGciOi.x.y"],
)
def test_unknown_tickets_are_unauthorized(bogus: str) -> None:
    tickets, _, _ = store()
    tickets.issue(ALICE)
    with pytest.raises(Unauthorized) as info:
        tickets.redeem(bogus)
    assert info.value.detail == "invalid token"
    assert len(tickets) == 1


def test_expired_tickets_are_purged_on_issue() -> None:
    tickets, mono, _ = store(ttl=10.0)
    for _ in range(1000):
        tickets.issue(ALICE)
    mono.now += 5
    keep = [tickets.issue(ALICE) for _ in range(3)]
    assert len(tickets) == 1003
    mono.now += 5  # the first thousand are now expired
    tickets.issue(ALICE)
    assert len(tickets) == 4
    assert all(tickets.redeem(ticket).subject == "alice" for ticket in keep)


def test_outstanding_tickets_are_capped() -> None:
    tickets, mono, _ = store(ttl=10.0, max_outstanding=100)
    for _ in range(100):
        tickets.issue(ALICE)
    with pytest.raises(ServiceUnavailable) as info:
        tickets.issue(ALICE)
    assert info.value.status == 503
    assert "too many outstanding tickets" in info.value.detail
    assert len(tickets) == 100
    mono.now += 10  # all expire: room again
    tickets.issue(ALICE)
    assert len(tickets) == 1


def test_default_cap_is_a_hundred_thousand() -> None:
    tickets, _, _ = store()
    for _ in range(100_000):
        tickets.issue(ALICE)
    with pytest.raises(ServiceUnavailable):
        tickets.issue(ALICE)


def test_store_keeps_no_redeemable_ticket_text() -> None:
    tickets, _, _ = store()
    ticket = tickets.issue(ALICE)
    assert all(isinstance(key, bytes) and ticket.encode() not in key for key in tickets._tickets)


@pytest.mark.parametrize("ttl", [0, -1, 61])
def test_ttl_bounds(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        TicketStore(ttl)


# --------------------------------------------------------------------------- with the Authenticator


def authenticator() -> Authenticator:
    config = gateway_config({"jwt": {"algorithms": ["HS256"], "secret": SECRET}})
    assert config.auth is not None
    return Authenticator(config.auth, config.topics)


async def test_issue_with_bearer_then_redeem_from_the_query() -> None:
    auth = authenticator()
    exp = int(time.time()) + 600
    ticket = await auth.issue_ticket(Credential(token(SECRET, exp=exp, sub="bob"), "header"))
    config = auth.config
    credential = extract_credential(
        {"type": "http", "headers": [], "query_string": f"a=1&token={ticket}".encode()}, config
    )
    assert credential == Credential(ticket, "ticket")
    principal = await auth.authenticate(credential)
    assert principal == Principal("bob", ("prices", "/orders/*"), float(exp), "ticket")
    with pytest.raises(Unauthorized):
        await auth.authenticate(credential)  # single use


async def test_issue_needs_a_valid_bearer_header() -> None:
    auth = authenticator()
    with pytest.raises(Unauthorized) as info:
        await auth.issue_ticket(None)
    assert info.value.detail == "missing credentials"
    for source in ("cookie", "query"):
        with pytest.raises(Unauthorized):
            await auth.issue_ticket(Credential(token(SECRET), source))
    with pytest.raises(Unauthorized):
        await auth.issue_ticket(Credential("not-a-token", "header"))
    assert auth.tickets is not None
    assert len(auth.tickets) == 0


async def test_tickets_disabled() -> None:
    config = gateway_config(
        {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "tickets": {"enabled": False}}
    )
    assert config.auth is not None
    auth = Authenticator(config.auth, config.topics)
    assert auth.tickets is None
    with pytest.raises(Unauthorized):
        await auth.issue_ticket(Credential(token(SECRET), "header"))
    with pytest.raises(Unauthorized):
        await auth.authenticate(Credential(TICKET_PREFIX + "x" * 43, "ticket"))


async def test_ticket_ttl_comes_from_config() -> None:
    config = gateway_config(
        {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "tickets": {"ttl_s": 5}}
    )
    assert config.auth is not None
    mono = Clock(0.0)
    tickets = TicketStore(config.auth.tickets.ttl_s, mono)
    auth = Authenticator(config.auth, config.topics, tickets=tickets)
    ticket = await auth.issue_ticket(Credential(token(SECRET), "header"))
    mono.now = 5.0
    with pytest.raises(Unauthorized):
        await auth.authenticate(Credential(ticket, "ticket"))
