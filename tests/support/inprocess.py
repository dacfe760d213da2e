"""The gateway served by hypercorn inside the test's own event loop, for tests
that inspect its state. Everything else about it is real: hypercorn, sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import hypercorn.asyncio.run
import hypercorn.asyncio.tcp_server
from hypercorn.asyncio import serve
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import EventWrapper, WorkerContext
from hypercorn.config import Config

from gateway import hyperglue
from gateway.app import GatewayApp
from gateway.config import parse_config


@contextmanager
def hypercorn_objects(*, lean: bool) -> Iterator[None]:
    """hypercorn with the gateway's lighter per-request objects, as the gateway
    runs (``lean``), or with hypercorn's own for the duration (the fallbacks,
    e.g. a task waiting for ``http.disconnect``, then serve)."""
    hyperglue.install()
    if lean:
        yield
        return
    vars(hypercorn.asyncio.run)["TCPServer"] = TCPServer
    vars(hypercorn.asyncio.tcp_server)["TaskGroup"] = TaskGroup
    WorkerContext.event_class = EventWrapper
    try:
        yield
    finally:
        hyperglue.install()


@asynccontextmanager
async def serve_inprocess(
    config_yaml: str, *, lean: bool = True
) -> AsyncIterator[tuple[GatewayApp, int]]:
    app = GatewayApp(parse_config(config_yaml))
    with hypercorn_objects(lean=lean):
        async with serve_asgi(app) as port:
            for _ in range(250):
                if app.ready:
                    break
                await asyncio.sleep(0.02)
            try:
                yield app, port
            finally:
                app.begin_shutdown()


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[int]:
    """Serve an ASGI application with hypercorn in this event loop on a free
    loopback port (already listening when this yields); stop it afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port: int = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
        sock.detach()  # hypercorn owned and closed the descriptor
