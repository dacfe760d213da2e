"""Run the gateway on hypercorn with uvloop: server settings, listeners, signals.

hypercorn settings chosen on purpose (DESIGN.md §5):
- ``read_timeout`` stays unset: any value kills an idle HTTP/1.1 SSE stream,
  because the browser never sends anything after its request.
- ``keep_alive_max_requests`` is raised: at the default (1000) hypercorn sends
  GOAWAY on an HTTP/2 connection and the streams still open on it freeze. That
  limit was hypercorn's Rapid Reset defence; the gateway's own is in
  :mod:`gateway.hyperglue` (``server.h2_max_resets_per_s`` / ``h2_reset_burst``),
  with ``server.h2_max_concurrent_streams`` and ``h2_max_header_list_bytes``.
- TLS uses a context the gateway owns (:mod:`gateway.tls`).
- SIGTERM/SIGINT first end every stream (each gets what is queued, then the
  end of the response; browsers reconnect after their jittered ``retry:``),
  then let hypercorn close the listeners.
- SIGHUP reads the configuration file again and applies it without dropping
  streams (:meth:`GatewayApp.reload`: topics, auth, CORS, limits; the h2 limits
  for new connections), then reloads the TLS certificate and key. An invalid
  file changes nothing. ``listen``, ``workers``, ``index_file`` and turning TLS on
  or off (or its ``min_version``) need a restart.

``server.workers > 1`` runs :mod:`gateway.supervisor`, whose workers each call
:func:`serve` on listening sockets created once by the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Sockets

from gateway import hyperglue, tls
from gateway.app import GatewayApp
from gateway.config import GatewayConfig, ServerConfig, load_config
from gateway.errors import ConfigError
from gateway.hyperglue import GatewayHypercornConfig, H2Limits

log = logging.getLogger("gateway.server")

# Effectively "never": see the module docstring.
MAX_REQUESTS_PER_CONNECTION = 2**31
# After the drain every stream has ended; this only bounds stragglers.
GRACEFUL_TIMEOUT_S = 0.5
# A TLS handshake must complete within this (hypercorn's default is 60 s).
TLS_HANDSHAKE_TIMEOUT_S = 10.0
# A reconnect storm (10,000 browsers back within a second) overflowed a backlog
# of 1024 here: dropped SYNs are retried after 1, 3, 7... s (benchmarks/
# RESULTS.md). The kernel caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 8192
# hypercorn closes a connection whose request head has not been handled this
# long after accept (and an idle keep-alive one). At its default (5 s) a loop
# that fell seconds behind in a 10,000-client reconnect storm closed 634
# connections before reading their requests; slow-header clients are still cut.
REQUEST_HEAD_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Listener:
    """A bound socket and whether TLS is spoken on it."""

    sock: socket.socket
    secure: bool


def h2_limits(server: ServerConfig) -> H2Limits:
    return H2Limits(
        max_header_list_bytes=server.h2_max_header_list_bytes,
        resets_per_s=server.h2_max_resets_per_s,
        reset_burst=server.h2_reset_burst,
    )


def apply_h2_limits(hc: GatewayHypercornConfig, server: ServerConfig) -> None:
    """Set the HTTP/2 limits (read by every connection when it starts)."""
    hc.gateway_h2_limits = h2_limits(server)
    hc.h2_max_concurrent_streams = server.h2_max_concurrent_streams
    hc.h2_max_header_list_size = server.h2_max_header_list_bytes


def needs_restart(running: ServerConfig, new: ServerConfig) -> list[str]:
    """The ``server`` keys whose change a reload cannot apply."""
    changed = [
        key
        for key in ("listen", "workers", "index_file")
        if getattr(running, key) != getattr(new, key)
    ]
    if (running.tls is None) != (new.tls is None) or (
        running.tls is not None
        and new.tls is not None
        and running.tls.min_version != new.tls.min_version
    ):
        changed.append("tls")
    return changed


def hypercorn_config(
    config: GatewayConfig, *, ssl_context: ssl.SSLContext | None = None
) -> GatewayHypercornConfig:
    server = config.server
    hc = GatewayHypercornConfig(ssl_context=ssl_context)
    apply_h2_limits(hc, server)
    hc.bind = list(server.listen)
    hc.worker_class = "uvloop"
    hc.read_timeout = None
    hc.keep_alive_max_requests = MAX_REQUESTS_PER_CONNECTION
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    hc.ssl_handshake_timeout = TLS_HANDSHAKE_TIMEOUT_S
    hc.backlog = LISTEN_BACKLOG
    hc.keep_alive_timeout = REQUEST_HEAD_TIMEOUT_S
    hc.include_server_header = False
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


# -- listening sockets ----------------------------------------------------------------------------


def open_listeners(listen: Sequence[str], *, secure: bool, copies: int = 1) -> list[list[Listener]]:
    """Bind (and listen on) every ``server.listen`` entry; one list per worker.

    With ``copies > 1`` each ``host:port`` gets one socket per worker, all bound with
    ``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers
    (a single shared socket lets whichever process wakes first take them). ``unix:``
    and inherited ``fd://`` sockets are shared by all workers. Every socket is
    listening before any worker starts: connections queue instead of being refused.
    """
    per_worker: list[list[Listener]] = [[] for _ in range(copies)]
    opened: list[socket.socket] = []
    try:
        for entry in listen:
            if entry.startswith(("unix:", "fd://")) or copies == 1:
                sock = _open_one(entry, reuse_port=False)
                opened.append(sock)
                for listeners in per_worker:
                    listeners.append(Listener(sock, secure))
                continue
            first = _open_one(entry, reuse_port=True)
            opened.append(first)
            port = first.getsockname()[1]  # port 0: all copies share the port picked first
            host = entry.rsplit(":", 1)[0]
            per_worker[0].append(Listener(first, secure))
            for listeners in per_worker[1:]:
                sock = _open_one(f"{host}:{port}", reuse_port=True)
                opened.append(sock)
                listeners.append(Listener(sock, secure))
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return per_worker


def _open_one(entry: str, *, reuse_port: bool) -> socket.socket:
    if entry.startswith("fd://"):
        sock = socket.socket(fileno=int(entry.removeprefix("fd://")))
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise OSError(f"{entry}: not a stream socket")
    elif entry.startswith("unix:"):
        path = entry.removeprefix("unix:")
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.remove(path)  # a stale socket from a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection is one fd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def read_index_page(config: GatewayConfig) -> bytes | None:
    path = config.server.index_file
    return None if path is None else Path(path).read_bytes()


# -- one process --------------------------------------------------------------------------------


async def serve(
    app: GatewayApp,
    config: GatewayConfig,
    *,
    listeners: Sequence[Listener] | None = None,
    worker: int | None = None,
    config_path: str | None = None,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT. Binds ``server.listen`` unless given
    ``listeners`` (a worker gets its sockets from the supervisor). On SIGHUP,
    ``config_path`` (when given) is read again and applied."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tls_config = config.server.tls
    context = tls.create_context(tls_config) if tls_config is not None else None
    hc = hypercorn_config(config, ssl_context=context)
    me = f"worker {worker} (pid {os.getpid()})" if worker is not None else f"pid {os.getpid()}"
    reloads: set[asyncio.Task[None]] = set()

    draining: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if draining:  # a second signal: no more waiting
            log.info("signal %s: stopping now", signal.Signals(signum).name)
            app.begin_shutdown()
            stop.set()
            return
        window = app.config.server.drain_window_s
        log.info("signal %s: draining over %.1f s", signal.Signals(signum).name, window)

        async def drain_then_stop() -> None:
            try:
                await app.drain(window)
            finally:
                stop.set()

        draining.append(loop.create_task(drain_then_stop()))

    async def reload_config() -> None:
        nonlocal tls_config
        if config_path is None:
            log.info("SIGHUP: %s: no configuration file to read again", me)
        else:
            try:
                new = load_config(config_path)
            except ConfigError as error:
                log.error(
                    "SIGHUP: %s: configuration not reloaded, still running the previous one:\n%s",
                    me,
                    error.render(),
                )
            else:
                restart = needs_restart(app.config.server, new.server)
                if restart:
                    log.warning(
                        "SIGHUP: %s: server.%s changed: applied at the next restart",
                        me,
                        ", server.".join(restart),
                    )
                apply_h2_limits(hc, new.server)
                try:
                    await app.reload(new)
                except Exception:
                    log.exception("SIGHUP: %s: applying the configuration failed", me)
                else:
                    log.info("SIGHUP: %s: configuration reloaded from %s", me, config_path)
                if context is not None and new.server.tls is not None:
                    tls_config = new.server.tls
        if context is None or tls_config is None:
            return
        try:
            info = tls.reload(context, tls_config)
        except tls.TLSFilesError as error:
            log.error("SIGHUP: %s: TLS reload failed, keeping the old certificate: %s", me, error)
        else:
            log.info("SIGHUP: %s: TLS certificate reloaded: %s", me, info.describe())

    def on_hangup() -> None:
        task = loop.create_task(reload_config())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    hyperglue.install()
    owned: list[Listener] = []
    if listeners is None:
        owned = open_listeners(config.server.listen, secure=context is not None)[0]
        listeners = owned
    sockets = Sockets(
        secure_sockets=[item.sock for item in listeners if item.secure],
        insecure_sockets=[item.sock for item in listeners if not item.secure],
        quic_sockets=[],
    )
    trigger: Any = stop.wait
    try:
        await worker_serve(
            # hypercorn calls an AppWrapper (hypercorn.typing) with two more
            # arguments than ASGI. GatewayApp takes and ignores them, so it needs
            # no ASGIWrapper, whose coroutine frame every stream would keep.
            app,  # type: ignore[arg-type]
            hc,
            sockets=sockets,
            shutdown_trigger=trigger,
        )
    finally:
        for item in owned:
            if item.sock.fileno() != -1:
                item.sock.close()


def run(
    config: GatewayConfig, *, index_page: bytes | None = None, config_path: str | None = None
) -> int:
    limit = raise_fd_limit()
    log.info("file descriptor limit: %d (about as many connections per process)", limit)
    if config.server.tls is not None:
        try:
            tls.check_files(config.server.tls)
        except tls.TLSFilesError as error:
            log.error("server.tls: %s", error)
            return 1
    if index_page is None:
        try:
            index_page = read_index_page(config)
        except OSError as error:
            log.error("server.index_file: %s", error)
            return 1
    if config.server.workers > 1:
        from gateway.supervisor import supervise

        return supervise(config, index_page=index_page, config_path=config_path)
    app = GatewayApp(config, index_page=index_page)
    uvloop.run(serve(app, config, config_path=config_path))
    return 0
