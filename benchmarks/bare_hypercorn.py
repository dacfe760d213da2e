"""The connect-storm floor for a hypercorn application: plain hypercorn 0.18 on
uvloop serving the smallest SSE response (headers, ``: ok``, then wait for the
client to leave), with the gateway's listen backlog and keep-alive timeout.

``python -m benchmarks.bare_hypercorn --serve-fd N``  (started by
:func:`benchmarks.servers.start_bare_hypercorn`)

What :mod:`benchmarks.storm_floor` measures against it is what any
application behind hypercorn's per-connection path pays before its own code
runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b": ok\n\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve-fd", type=int, required=True)
    args = parser.parse_args(argv)
    config = Config()
    config.bind = [f"fd://{args.serve_fd}"]
    config.accesslog = None
    config.backlog = 8192
    config.keep_alive_timeout = 20.0
    uvloop.run(serve(app, config))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
