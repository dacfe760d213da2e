"""``sse-gateway demo``: the demo origin and the gateway in one process."""

from __future__ import annotations

import logging
from importlib import resources

import uvloop

from gateway.app import GatewayApp
from gateway.config import parse_config
from gateway.demo.upstream import DemoUpstream
from gateway.server import serve

log = logging.getLogger("gateway.demo")


def run_demo(*, host: str, port: int) -> int:
    async def main() -> None:
        origin = DemoUpstream()
        origin_port = await origin.start()
        text = resources.files("gateway.demo").joinpath("config.yaml").read_text()
        env = {"DEMO_UPSTREAM": f"http://127.0.0.1:{origin_port}", "DEMO_LISTEN": f"{host}:{port}"}
        config = parse_config(text, env=env, source="demo config")
        page = resources.files("gateway.static").joinpath("demo.html").read_bytes()
        app = GatewayApp(config, index_page=page)
        print(f"\n  SSE gateway demo: open http://{host}:{port}/ in a browser\n", flush=True)
        try:
            await serve(app, config)
        finally:
            await origin.stop()

    uvloop.run(main())
    return 0
