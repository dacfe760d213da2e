"""The gateway served by hypercorn inside the test's own event loop, for tests
that inspect its state. Everything else about it is real: hypercorn, sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway.app import GatewayApp
from gateway.config import parse_config


@asynccontextmanager
async def serve_inprocess(config_yaml: str) -> AsyncIterator[tuple[GatewayApp, int]]:
    app = GatewayApp(parse_config(config_yaml))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port: int = sock.getsockname()[1]
    hc = Config()
    hc.bind = [f"fd://{sock.fileno()}"]
    hc.accesslog = None
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(250):
        if app.ready:
            break
        await asyncio.sleep(0.02)
    try:
        yield app, port
    finally:
        app.begin_shutdown()
        stop.set()
        await asyncio.wait_for(server, 10)
        sock.detach()  # hypercorn owned and closed the descriptor
