"""The ASGI application: routes, topic streams, lifespan.

Routes:
    GET /healthz                       alive
    GET /readyz                        started, not draining, eager upstreams connected
    GET /metrics                       Prometheus metrics          (admin.token / admin.allow)
    GET /status                        status page, live over SSE from /_gateway/status/stream
    POST /_gateway/ticket              a single-use ticket for a bearer token
    GET /                              the index page, when the app was built with one
    GET <topic path>                   the event stream of one topic instance
    GET /events?topic=/a&topic=/b      several topics multiplexed on one stream
Every request first passes :class:`gateway.gate.Gate` (size, CORS, credentials,
grants, limits). Resume with ``Last-Event-ID`` or ``?last_event_id=`` (the
header wins). Anything else is a plain-text 404; other methods are 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from importlib import resources
from urllib.parse import parse_qsl

import httpx

from gateway.asgi import Headers, Receive, Scope, Send, header, respond
from gateway.channel import attach_multiplexed
from gateway.config import GatewayConfig
from gateway.errors import AuthError, BadRequest, HTTPError, MethodNotAllowed, NotFound
from gateway.gate import Gate
from gateway.hub import CloseReason, Housekeeper, Policy, QueueLimits, Subscriber, jittered
from gateway.limits import overload_body
from gateway.logs import fields
from gateway.metrics import Metrics
from gateway.registry import Registry
from gateway.ring import gap_frame
from gateway.status import StatusFeed
from gateway.stream import StreamPlan, first_bytes, retry_frame, run_stream, stream_headers
from gateway.topics import TopicInstance

log = logging.getLogger("gateway.app")

ALLOW = b"GET, HEAD, OPTIONS"
STATUS_STREAM_PATH = "/_gateway/status/stream"
ADMIN_PATHS = frozenset({"/metrics", "/status", STATUS_STREAM_PATH})
# How long a drain waits past its window for the last streams to flush.
DRAIN_GRACE_S = 0.5
# The shortest stream a credential close to expiry gets.
MIN_STREAM_S = 1.0
# Longer than any cursor the gateway hands out, so it resolves to a gap.
MALFORMED_CURSOR = "~malformed" + "~" * 200
# A vanished peer (no FIN) is noticed when heartbeat data stays unacknowledged
# this much longer than one heartbeat period.
USER_TIMEOUT_MARGIN_S = 15.0


class GatewayApp:
    def __init__(self, config: GatewayConfig, *, index_page: bytes | None = None) -> None:
        self.config = config
        self.index_page = index_page
        self.housekeeper = Housekeeper(send_timeout_s=config.stream.send_timeout_s)
        self.metrics = Metrics()
        self.status_feed: StatusFeed | None = None
        self.gate: Gate | None = None
        self.registry: Registry | None = None
        self.client: httpx.AsyncClient | None = None
        self.ready = False
        self.draining = False

    # -- lifespan -------------------------------------------------------------

    async def startup(self) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,
        )
        self.registry = Registry(self.config, client=self.client, metrics=self.metrics)
        self.gate = Gate(self.config, client=self.client, metrics=self.metrics)
        self.registry.start_eager()
        self.housekeeper.start()
        tune_gc()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.housekeeper.stop()
        if self.registry is not None:
            await self.registry.close(CloseReason.SHUTDOWN)
        if self.gate is not None:
            await self.gate.aclose()
        if self.client is not None:
            await self.client.aclose()

    def begin_shutdown(self) -> None:
        """Stop being ready and end every stream now (each flushes what it has)."""
        self.draining = True
        self.ready = False
        for subscriber in list(self.housekeeper.subscribers):
            self._end_stream(subscriber)

    async def drain(self, window_s: float) -> None:
        """End every stream, spread evenly at random over ``window_s`` so that
        clients do not all come back in the same second; each gets a fresh
        jittered ``retry:`` first. Returns when all have ended, or after
        ``window_s`` plus a moment whatever is left: what is still open then
        (a client not reading its last bytes) is aborted."""
        self.draining = True
        self.ready = False
        loop = asyncio.get_running_loop()
        handles = [
            loop.call_later(random.uniform(0, window_s), self._end_stream, subscriber)
            for subscriber in list(self.housekeeper.subscribers)
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.housekeeper.wait_empty(), window_s + DRAIN_GRACE_S)
        for handle in handles:
            handle.cancel()
        for subscriber in list(self.housekeeper.subscribers):
            subscriber.abort(CloseReason.SHUTDOWN)

    def not_ready(self) -> str | None:
        """Why a load balancer should not send new clients here, or None:
        before startup, while draining, or while an eager topic's upstream is
        not connected."""
        if self.draining:
            return "draining"
        if not self.ready or self.registry is None:
            return "starting"
        for live in self.registry.live.values():
            if live.held and not live.upstream.connected.is_set():
                return f"upstream of {live.instance.path} not connected"
        return None

    async def reload(self, config: GatewayConfig) -> None:
        """Apply a new, already validated configuration (SIGHUP). New streams
        use it at once (topics, auth keys and tokens, CORS, limits); streams of
        unchanged topics keep going undisturbed.
        A removed topic ends its single-topic streams (with a ``retry:``; the
        reconnect then gets a 404) and leaves multiplexed streams with a
        ``gateway-gap`` event whose reason is ``removed``."""
        self.config = config
        self.housekeeper.send_timeout_s = config.stream.send_timeout_s
        if self.gate is not None:
            await self.gate.reload(config)
        if self.registry is None:
            return
        for live in self.registry.reload(config):
            channel = live.channel
            for subscriber in list(channel.subscribers):
                self._end_stream(subscriber, CloseReason.TOPIC_CLOSED)
            for subscriber in list(channel.mux_subscribers):
                channel.detach(subscriber)
                subscriber.offer(gap_frame(channel.path, "removed", None))

    def _end_stream(
        self, subscriber: Subscriber, reason: CloseReason = CloseReason.SHUTDOWN
    ) -> None:
        """End a stream cleanly, after a fresh jittered ``retry:``."""
        stream = self.config.stream
        subscriber.offer(retry_frame(stream.retry_min_ms, stream.retry_max_ms))
        subscriber.close(reason)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- http -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, *_: object) -> None:
        # ``*_``: hypercorn calls it directly, with its wrapper's two extra arguments.
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        cors: Headers = []
        try:
            gate = self.gate
            assert gate is not None, "request before lifespan startup"
            gate.check_size(scope)
            cors = gate.cors_headers(scope)
            await self._http(scope, receive, send, gate, cors)
        except HTTPError as error:
            headers = list(cors)
            if isinstance(error, MethodNotAllowed):
                headers.append((b"allow", ALLOW))
            if isinstance(error, AuthError):
                headers.append((b"www-authenticate", error.www_authenticate()))
                log.info(
                    "refused",
                    extra=fields(
                        path=scope["path"], status=error.status, reason=error.detail, why=error.why
                    ),
                )
            await respond(send, error.status, f"{error.detail}\n".encode(), headers=headers)

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, gate: Gate, cors: Headers
    ) -> None:
        method = scope["method"]
        head = method == "HEAD"
        path = scope["path"]
        if method == "POST" and path == gate.ticket_path:
            body = await gate.ticket(scope)
            await respond(send, 200, body, content_type=b"application/json", headers=cors)
            return
        if method not in ("GET", "HEAD", "OPTIONS"):
            raise MethodNotAllowed(f"method {method} not allowed")
        if method == "OPTIONS":
            preflight = gate.preflight(scope)
            await respond(send, 204, headers=preflight or [(b"allow", ALLOW)])
            return
        if path == "/healthz":
            await respond(send, 200, b"ok\n", head=head)
            return
        if path == "/readyz":
            problem = self.not_ready()
            if problem is None:
                await respond(send, 200, b"ready\n", head=head)
            else:
                await respond(send, 503, f"not ready: {problem}\n".encode(), head=head)
            return
        if path in ADMIN_PATHS:
            gate.check_admin(scope)
        if path == "/metrics":
            body, content_type = self.metrics.render()
            await respond(send, 200, body, content_type=content_type.encode(), head=head)
            return
        if path == "/status":
            page = resources.files("gateway.static").joinpath("status.html").read_bytes()
            await respond(send, 200, page, content_type=b"text/html; charset=utf-8", head=head)
            return
        if path == STATUS_STREAM_PATH:
            await self._serve_status(scope, receive, send)
            return
        if path == "/" and self.index_page is not None:
            await respond(
                send, 200, self.index_page, content_type=b"text/html; charset=utf-8", head=head
            )
            return
        registry = self.registry
        assert registry is not None, "request before lifespan startup"
        query = parse_query(scope["query_string"])
        if path == "/events":
            instances = self._multiplexed_topics(registry, query)
        else:
            instances = [registry.router.resolve(scope["raw_path"].decode("latin-1"))]
        principal = await gate.admit(scope, instances)
        headers = stream_headers(scope) + cors
        if head:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        lease = None if self.draining else gate.lease(scope, principal)
        if lease is None:
            # Draining or over a limit. Not 429/503: any non-200 stops an
            # EventSource for good (DESIGN.md §4); a long jittered retry spreads
            # the returns.
            limits = self.config.limits
            if self.draining:
                body = retry_frame(self.config.stream.retry_min_ms, self.config.stream.retry_max_ms)
            else:
                body = overload_body(limits.overload_retry_min_ms, limits.overload_retry_max_ms)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            plan = self._subscribe(
                registry,
                instances,
                resume_cursor(scope, query),
                mux=path == "/events",
                extra_headers=cors,
                expires_in_s=principal.seconds_left(time.time()) if principal else None,
            )
            await run_stream(
                scope, receive, send, plan, housekeeper=self.housekeeper, metrics=self.metrics
            )
        finally:
            lease.release()

    async def _serve_status(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.registry is not None
        if self.status_feed is None:
            self.status_feed = StatusFeed(self.registry)
        feed = self.status_feed
        stream = self.config.stream
        subscriber = Subscriber(
            QueueLimits(1, 1 << 20, Policy.LATEST), beat_interval_s=jittered(stream.heartbeat_s)
        )
        plan = StreamPlan(
            subscriber=subscriber,
            prelude=[
                first_bytes(stream.retry_min_ms, stream.retry_max_ms),
                *feed.attach(subscriber),
            ],
            on_close=lambda: feed.detach(subscriber),
            topics=STATUS_STREAM_PATH,
            user_timeout_s=stream.heartbeat_s + USER_TIMEOUT_MARGIN_S,
        )
        await run_stream(scope, receive, send, plan, housekeeper=self.housekeeper)

    def _multiplexed_topics(
        self, registry: Registry, query: list[tuple[str, str]]
    ) -> list[TopicInstance]:
        paths = list(dict.fromkeys(value for key, value in query if key == "topic"))
        if not paths:
            raise BadRequest("name at least one topic: /events?topic=/a&topic=/b")
        limit = self.config.stream.max_topics_per_connection
        if len(paths) > limit:
            raise BadRequest(f"too many topics: {len(paths)} (at most {limit} per connection)")
        instances: dict[str, TopicInstance] = {}
        for path in paths:
            try:
                instance = registry.router.resolve(path)
            except NotFound:
                raise NotFound(f"no such topic: {short(path)}") from None
            instances.setdefault(instance.path, instance)
        return list(instances.values())

    def _subscribe(
        self,
        registry: Registry,
        instances: list[TopicInstance],
        cursor: str | None,
        *,
        mux: bool,
        extra_headers: Headers,
        expires_in_s: float | None,
    ) -> StreamPlan:
        """Attach a new subscriber to its channels, with its replay. Synchronous:
        the stream's task then has one coroutine frame less to keep for as
        long as the stream lives."""
        stream = self.config.stream
        lives = [registry.acquire(instance) for instance in instances]
        if mux:
            # Conflating one connection's queue would drop other topics' events.
            policy = Policy(stream.policy)
            limits = QueueLimits(
                stream.queue_max_events,
                stream.queue_max_bytes,
                Policy.DROP_OLDEST if policy is Policy.LATEST else policy,
            )
        else:
            limits = lives[0].settings.queue
        subscriber = Subscriber(limits, beat_interval_s=jittered(stream.heartbeat_s))
        prelude = [first_bytes(stream.retry_min_ms, stream.retry_max_ms)]
        if mux:
            prelude += attach_multiplexed([live.channel for live in lives], subscriber, cursor)
        else:
            prelude += lives[0].channel.attach(subscriber, cursor)

        expiry = None
        if expires_in_s is not None:
            # The credential's expiry ends the stream (with a retry:); the
            # reconnect must bring a fresh token. A floor keeps a token accepted
            # within the leeway from reconnecting in a tight loop.
            expiry = asyncio.get_running_loop().call_later(
                max(expires_in_s, MIN_STREAM_S),
                self._end_stream,
                subscriber,
                CloseReason.CREDENTIALS_EXPIRED,
            )

        def detach() -> None:
            if expiry is not None:
                expiry.cancel()
            for live in lives:
                live.channel.detach(subscriber)
                registry.release(live)

        return StreamPlan(
            subscriber=subscriber,
            prelude=prelude,
            on_close=detach,
            topics=",".join(instance.path for instance in instances),
            user_timeout_s=stream.heartbeat_s + USER_TIMEOUT_MARGIN_S,
            extra_headers=extra_headers,
        )


def tune_gc() -> None:
    """Fewer, cheaper collections. A gateway holds tens of thousands of
    long-lived objects per thousand streams; with the default thresholds the
    collector walked them all so often that it took 27% of the CPU at 10,000
    subscribers (benchmarks/RESULTS.md). Objects alive at startup are frozen
    out of collection; young-generation collections run 140x less often."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    # surrogateescape: invalid UTF-8 must reach the cursor check as "malformed",
    # not fail the request.
    return parse_qsl(
        query_string.decode("latin-1"),
        keep_blank_values=True,
        encoding="utf-8",
        errors="surrogateescape",
    )


def resume_cursor(scope: Scope, query: list[tuple[str, str]]) -> str | None:
    """Where a reconnecting client left off. The header wins: a browser
    reconnecting by itself sends it with the original URL, whose
    ``last_event_id`` (set by a manual reconnect) may be older."""
    raw = header(scope, b"last-event-id")
    if raw is not None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return MALFORMED_CURSOR
    for key, value in query:
        if key == "last_event_id":
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return MALFORMED_CURSOR
            return value
    return None


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
