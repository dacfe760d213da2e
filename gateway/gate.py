"""Everything decided before a stream starts, in one order:

1. request size (URL length, header count and bytes): 414 / 431;
2. CORS (preflight answers, response headers for allowed origins);
3. credentials (``Authorization: Bearer``, then the cookie, then the query
   parameter; a ticket travels in the query parameter) and grants: 401 / 403;
4. connection limits (total, per client IP, per token subject): an overload
   answer, 200 with a long jittered ``retry:`` and the end of the response,
   never 429/5xx (those stop an ``EventSource`` for good).

Without an ``auth`` section every topic is public and no credential is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Sequence

import httpx

from gateway.asgi import Headers, Scope, header
from gateway.auth import (
    Authenticator,
    Principal,
    authorize,
    extract_bearer,
    extract_credential,
    query_value,
)
from gateway.config import GatewayConfig
from gateway.cors import CorsPolicy
from gateway.errors import AuthError, NotFound, Unauthorized
from gateway.limits import ConnectionLimiter, Lease, TrustedProxies, check_request_size, client_ip
from gateway.metrics import Metrics
from gateway.topics import TopicInstance


class Gate:
    def __init__(
        self, config: GatewayConfig, *, client: httpx.AsyncClient, metrics: Metrics
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.limiter = ConnectionLimiter.from_config(config.limits)
        self._configure(config)

    def _configure(self, config: GatewayConfig) -> None:
        self.config = config
        auth = config.auth
        previous = getattr(self, "authenticator", None)
        # Tickets already handed out stay redeemable across a reload.
        tickets = previous.tickets if previous is not None else None
        self.authenticator = (
            Authenticator(auth, config.topics, self.client, tickets=tickets)
            if auth is not None
            else None
        )
        self.cors = (
            CorsPolicy(auth.cors, ticket_path=auth.tickets.path if auth.tickets.enabled else None)
            if auth is not None and auth.cors.allowed_origins
            else None
        )
        self.ticket_path = auth.tickets.path if auth is not None and auth.tickets.enabled else None
        self.trusted = TrustedProxies(config.limits.trusted_proxies)
        self.admin_networks = TrustedProxies(config.admin.allow)

    async def reload(self, config: GatewayConfig) -> None:
        """New keys, tokens, CORS and limits for new requests; open streams keep
        what they were admitted with."""
        old = self.authenticator
        limiter = self.limiter
        self._configure(config)
        limiter.max_total = config.limits.max_connections
        limiter.max_per_ip = config.limits.max_connections_per_ip
        limiter.max_per_subject = config.limits.max_connections_per_subject
        if old is not None:
            await old.aclose()

    async def aclose(self) -> None:
        if self.authenticator is not None:
            await self.authenticator.aclose()

    # -- 1. size ---------------------------------------------------------------

    def check_size(self, scope: Scope) -> None:
        try:
            check_request_size(scope, self.config.limits)
        except Exception:
            self.metrics.limits_hit.labels("request_size").inc()
            raise

    # -- 2. CORS -----------------------------------------------------------------

    def preflight(self, scope: Scope) -> Headers | None:
        """Headers for a CORS preflight, None when it is not one we allow."""
        if self.cors is None or header(scope, b"access-control-request-method") is None:
            return None
        return self.cors.preflight_headers(scope["headers"], scope["path"])

    def cors_headers(self, scope: Scope) -> Headers:
        if self.cors is None:
            return []
        origin = header(scope, b"origin")
        return self.cors.response_headers(origin.decode("latin-1") if origin else None)

    # -- 3. credentials and grants -------------------------------------------------

    async def admit(self, scope: Scope, instances: Sequence[TopicInstance]) -> Principal | None:
        """The principal allowed to stream ``instances``; raises 401 / 403."""
        authenticator = self.authenticator
        try:
            if authenticator is None:
                return None
            if all(instance.topic.public for instance in instances):
                principal = None
            else:
                credential = extract_credential(scope, authenticator.config)
                principal = await authenticator.authenticate(credential)
            authorize(principal, instances)
            return principal
        except AuthError as error:
            self.metrics.auth_failures.labels(error.detail).inc()
            raise

    async def ticket(self, scope: Scope) -> bytes:
        """The body answering a ticket request (a POST with a bearer token)."""
        assert self.authenticator is not None
        assert self.config.auth is not None
        try:
            ticket = await self.authenticator.issue_ticket(extract_bearer(scope))
        except AuthError as error:
            self.metrics.auth_failures.labels(error.detail).inc()
            raise
        ttl = self.config.auth.tickets.ttl_s
        return json.dumps({"ticket": ticket, "expires_in": ttl}).encode()

    # -- admin endpoints ---------------------------------------------------------------

    def check_admin(self, scope: Scope) -> None:
        """``/metrics`` and the status page: the admin token and client networks."""
        admin = self.config.admin
        if admin.allow and not self._admin_peer(scope):
            raise NotFound()  # as if it were not there
        if admin.token is None:
            return
        presented = extract_bearer(scope)
        value = (
            presented.value
            if presented is not None
            else query_value(scope["query_string"], "token")
        )
        if value is None or not hmac.compare_digest(value.encode(), admin.token.encode()):
            self.metrics.auth_failures.labels("admin").inc()
            raise Unauthorized("missing credentials" if value is None else "invalid token")

    def _admin_peer(self, scope: Scope) -> bool:
        allowed = self.admin_networks
        peer = scope.get("client")
        if peer is None:
            return allowed.unix
        try:
            return ipaddress.ip_address(str(peer[0])) in allowed
        except ValueError:
            return False

    # -- 4. limits -------------------------------------------------------------------

    def lease(self, scope: Scope, principal: Principal | None) -> Lease | None:
        ip = client_ip(scope, self.trusted)
        lease = self.limiter.try_acquire(ip, principal.subject if principal else None)
        if lease is None:
            self.metrics.limits_hit.labels("connections").inc()
        return lease
