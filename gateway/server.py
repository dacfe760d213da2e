"""Run the gateway on hypercorn with uvloop: server settings and signals.

hypercorn settings chosen on purpose (DESIGN.md §5):
- ``read_timeout`` stays unset: any value kills an idle HTTP/1.1 SSE stream,
  because the browser never sends anything after its request.
- ``keep_alive_max_requests`` is raised: at the default (1000) hypercorn sends
  GOAWAY on an HTTP/2 connection and the streams still open on it freeze.
- SIGTERM/SIGINT first end every stream (each gets what is queued, then the
  end of the response; browsers reconnect after their jittered ``retry:``),
  then let hypercorn close the listeners.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import uvloop
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from gateway.app import GatewayApp
from gateway.config import GatewayConfig

log = logging.getLogger("gateway.server")

# Effectively "never": see the module docstring.
MAX_REQUESTS_PER_CONNECTION = 2**31
# How long hypercorn waits for connections after the streams were told to end.
GRACEFUL_TIMEOUT_S = 5.0


def hypercorn_config(config: GatewayConfig) -> HypercornConfig:
    server = config.server
    hc = HypercornConfig()
    hc.bind = list(server.listen)
    hc.worker_class = "uvloop"
    hc.read_timeout = None
    hc.keep_alive_max_requests = MAX_REQUESTS_PER_CONNECTION
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    hc.include_server_header = False
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    if server.tls is not None:
        hc.certfile = server.tls.cert_file
        hc.keyfile = server.tls.key_file
        if server.tls.ca_file:
            hc.ca_certs = server.tls.ca_file
        hc.alpn_protocols = ["h2", "http/1.1"]
    return hc


async def serve(app: GatewayApp, config: GatewayConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        app.begin_shutdown()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    async def shutdown_trigger() -> None:
        await stop.wait()

    trigger: Any = shutdown_trigger
    await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=trigger)  # type: ignore[arg-type]


def run(config: GatewayConfig, *, index_page: bytes | None = None) -> int:
    if config.server.workers != 1:
        log.error("server.workers > 1 is not supported yet; set server.workers: 1")
        return 2
    app = GatewayApp(config, index_page=index_page)
    uvloop.run(serve(app, config))
    return 0
