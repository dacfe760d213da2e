"""The servers under test, each one process the scenarios can pin, measure and kill.

- ``gateway``: ``python -m gateway run --config FILE`` with a temp config (one
  topic ``/bench`` over the origin's ``/stream``, connection limits raised
  above the client count) on a socket we bound and pass as ``fd://N``.
- ``floor``: :mod:`benchmarks.floor`'s raw uvloop fan-out server, same socket
  passing, same origin.
- ``bare_hypercorn``: :mod:`benchmarks.bare_hypercorn`, hypercorn serving the
  smallest SSE response (the connect-storm floor for a hypercorn app).
- ``nchan``: nginx with the nchan module, ``daemon off; master_process off;
  worker_processes 1;`` so the one process is the whole server, configured in
  a temp dir (its own pid file, error log and temp paths). Publishing is by
  HTTP POST to ``/pub``; subscribers use ``/sub`` (EventSource).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.proc import Child, free_port, listen_socket, wait_http_ok

HOST = "127.0.0.1"
NGINX = "/usr/sbin/nginx"
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


@dataclass
class Server:
    name: str
    child: Child
    host: str
    port: int
    path: str  # what subscribers GET

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> None:
        self.child.stop()


def gateway_config(fd: int, upstream_url: str, clients: int) -> dict[str, object]:
    """One topic; everything else at the gateway's defaults, except connection
    limits: the load generator's few source addresses would otherwise hit the
    per-IP limit (a load balancer not declared as a trusted proxy would too).
    What is measured is fan-out, not the limiter. Older gateways without
    ``limits`` get no such key (unknown keys are config errors)."""
    config: dict[str, object] = {
        "server": {"listen": [f"fd://{fd}"]},
        "topics": [{"name": "bench", "path": "/bench", "upstream": upstream_url}],
    }
    from gateway.config import GatewayConfig

    field = GatewayConfig.model_fields.get("limits")
    known = getattr(field.annotation, "model_fields", {}) if field is not None else {}
    # Room for a whole reconnect storm while the old connections are released.
    ceiling = 2 * clients + 100
    limits = {key: ceiling for key in ("max_connections", "max_connections_per_ip") if key in known}
    if limits:
        config["limits"] = limits
    return config


def _ready(server: Server) -> Server:
    """``server`` once its /healthz answers; stopped if it never does."""
    try:
        wait_http_ok(server.child, server.host, server.port, "/healthz")
    except BaseException:
        server.stop()
        raise
    return server


def _serve_on_socket(
    tmp: Path, name: str, argv_for: Callable[[int], list[str]], *, cpu: int | None
) -> Server:
    """Bind a listening socket, start ``argv_for(fd)`` with it, wait for /healthz."""
    sock = listen_socket(HOST)
    try:
        port = int(sock.getsockname()[1])
        child = Child(
            argv_for(sock.fileno()), log_path=tmp / f"{name}.log", cpu=cpu, pass_fds=[sock.fileno()]
        )
    finally:
        # The child has its own copy; without ours a dead server refuses connections.
        sock.close()
    server = Server(name, child, HOST, port, "/bench")
    return _ready(server)


def start_gateway(tmp: Path, *, upstream_port: int, cpu: int | None, clients: int) -> Server:
    def argv_for(fd: int) -> list[str]:
        config_path = tmp / "gateway.yaml"
        config = gateway_config(fd, f"http://{HOST}:{upstream_port}/stream", clients)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [sys.executable, "-m", "gateway", "run", "--config", str(config_path)]

    return _serve_on_socket(tmp, "gateway", argv_for, cpu=cpu)


def start_bare_hypercorn(tmp: Path, *, cpu: int | None) -> Server:
    def argv_for(fd: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.bare_hypercorn", "--serve-fd", str(fd)]

    return _serve_on_socket(tmp, "bare_hypercorn", argv_for, cpu=cpu)


def start_floor(tmp: Path, *, upstream_port: int, cpu: int | None) -> Server:
    def argv_for(fd: int) -> list[str]:
        upstream = f"{HOST}:{upstream_port}"
        return [
            sys.executable,
            "-m",
            "benchmarks.floor",
            "--serve-fd",
            str(fd),
            "--upstream",
            upstream,
        ]

    return _serve_on_socket(tmp, "floor", argv_for, cpu=cpu)


def nchan_available() -> bool:
    return Path(NGINX).exists() and Path(NCHAN_MODULE).exists()


NCHAN_CONF = """\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
load_module {module};
events {{
    worker_connections 20000;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # One publisher connection carries every POST of a run.
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen {host}:{port} backlog=4096;
        location = /healthz {{
            return 200 "ok\\n";
        }}
        location = /pub {{
            nchan_publisher;
            nchan_channel_id bench;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 10m;
        }}
        location = /sub {{
            nchan_subscriber eventsource;
            nchan_channel_id bench;
        }}
    }}
}}
"""


def start_nchan(tmp: Path, *, cpu: int | None) -> Server:
    port = free_port(HOST)
    conf = tmp / "nginx.conf"
    conf.write_text(NCHAN_CONF.format(tmp=tmp, module=NCHAN_MODULE, host=HOST, port=port))
    argv = [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    # Its stderr and its error log in one file, so a failed start shows why.
    child = Child(argv, log_path=tmp / "error.log", cpu=cpu)
    server = Server("nchan", child, HOST, port, "/sub")
    return _ready(server)
