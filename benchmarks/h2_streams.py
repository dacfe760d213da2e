"""HTTP/2 fan-out: N SSE streams spread over C h2c (prior knowledge) connections.

``python -m benchmarks.h2_streams --streams N --connections C --rate R|max --duration S [--pin]``

The same procedure and JSON fields as :mod:`benchmarks.fanout` (deliveries/s,
publish -> receive latency, loss, server CPU per delivery, RSS per stream,
upstream connections), with clients built on the ``h2`` library directly
(:mod:`benchmarks.h2client`), not httpx: each connection opens its share of
GET streams at once, keeps flow-control windows wide open and acknowledges
every DATA frame. hypercorn allows 100 concurrent streams per connection by
default (``h2_max_concurrent_streams``), so N/C above 100 shows up as
``connect_failed`` (refused streams).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from benchmarks import fanout, scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    fanout.add_arguments(parser, clients_flag="--streams")
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args(argv)
    timeout = 240.0 + args.duration + args.drain_timeout

    def body(stack: contextlib.ExitStack) -> dict[str, Any]:
        result = fanout.run_fanout(
            stack,
            args,
            server_kind="gateway",
            name="h2_streams",
            h2_connections=args.connections,
        )
        result["streams"] = result.pop("clients")
        return result

    return scenario.run("h2_streams", body, timeout_s=timeout)


if __name__ == "__main__":
    sys.exit(main())
