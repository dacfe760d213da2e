"""The ASGI application: routes, topic streams, lifespan.

Routes:
    GET /healthz        alive
    GET /readyz         started (lifespan complete) and not shutting down
    GET /               the demo page, when the app was built with one
    GET <topic path>    the event stream of one topic instance
Anything else is a plain-text 404; methods other than GET/HEAD/OPTIONS are 405.
"""

from __future__ import annotations

import logging

import httpx

from gateway.asgi import Receive, Scope, Send, respond
from gateway.config import GatewayConfig
from gateway.errors import HTTPError, MethodNotAllowed
from gateway.hub import CloseReason, Housekeeper, Subscriber, jittered
from gateway.registry import Registry
from gateway.stream import first_bytes, run_stream, stream_headers
from gateway.topics import TopicInstance

log = logging.getLogger("gateway.app")

ALLOW = b"GET, HEAD, OPTIONS"
# A vanished peer (no FIN) is noticed when heartbeat data stays unacknowledged
# this much longer than one heartbeat period.
USER_TIMEOUT_MARGIN_S = 15.0


class GatewayApp:
    def __init__(self, config: GatewayConfig, *, index_page: bytes | None = None) -> None:
        self.config = config
        self.index_page = index_page
        self.housekeeper = Housekeeper(send_timeout_s=config.stream.send_timeout_s)
        self.registry: Registry | None = None
        self.client: httpx.AsyncClient | None = None
        self.ready = False

    # -- lifespan -------------------------------------------------------------

    async def startup(self) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,
        )
        self.registry = Registry(self.config, client=self.client)
        self.registry.start_eager()
        self.housekeeper.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.housekeeper.stop()
        if self.registry is not None:
            await self.registry.close(CloseReason.SHUTDOWN)
        if self.client is not None:
            await self.client.aclose()

    def begin_shutdown(self) -> None:
        """Stop being ready and end every stream (each flushes what it has)."""
        self.ready = False
        if self.registry is not None:
            for live in self.registry.live.values():
                live.channel.close_all(CloseReason.SHUTDOWN)

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except HTTPError as error:
            await respond(
                send,
                error.status,
                f"{error.detail}\n".encode(),
                headers=[(b"allow", ALLOW)] if isinstance(error, MethodNotAllowed) else None,
            )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        head = method == "HEAD"
        path = scope["path"]
        if method not in ("GET", "HEAD", "OPTIONS"):
            raise MethodNotAllowed(f"method {method} not allowed")
        if method == "OPTIONS":
            await respond(send, 204, headers=[(b"allow", ALLOW)])
            return
        if path == "/healthz":
            await respond(send, 200, b"ok\n", head=head)
            return
        if path == "/readyz":
            ready = self.ready and self.registry is not None
            await respond(send, 200 if ready else 503, b"ready\n" if ready else b"not ready\n")
            return
        if path == "/" and self.index_page is not None:
            await respond(
                send, 200, self.index_page, content_type=b"text/html; charset=utf-8", head=head
            )
            return
        registry = self.registry
        assert registry is not None, "request before lifespan startup"
        instance = registry.router.resolve(scope["raw_path"].decode("latin-1"))
        if head:
            await send(
                {"type": "http.response.start", "status": 200, "headers": stream_headers(scope)}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await self._serve_topic(scope, receive, send, registry, instance)

    async def _serve_topic(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        registry: Registry,
        instance: TopicInstance,
    ) -> None:
        live = registry.acquire(instance)
        stream = self.config.stream
        subscriber = Subscriber(live.settings.queue, beat_interval_s=jittered(stream.heartbeat_s))
        live.channel.add(subscriber)

        def detach() -> None:
            live.channel.remove(subscriber)
            registry.release(live)

        await run_stream(
            scope,
            receive,
            send,
            subscriber=subscriber,
            housekeeper=self.housekeeper,
            prelude=first_bytes(stream.retry_min_ms, stream.retry_max_ms),
            user_timeout_s=stream.heartbeat_s + USER_TIMEOUT_MARGIN_S,
            on_close=detach,
        )
