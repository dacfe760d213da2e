"""Connect-storm floor: N clients connect at once to plain hypercorn
(:mod:`benchmarks.bare_hypercorn`), the first phase of
:mod:`benchmarks.connect_storm` without the gateway.

``python -m benchmarks.storm_floor --clients N [--pin]``

Reported: ``all_established_s`` (the slowest client), ``connect_p50_ms`` /
``_p99_ms`` / ``_max_ms``, ``connect_failed``. Compare with the gateway's
``all_established_s`` from :mod:`benchmarks.connect_storm` on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from benchmarks import scenario, stats
from benchmarks.loadgen import LoadGen
from benchmarks.servers import start_bare_hypercorn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--pin", action="store_true")
    args = parser.parse_args(argv)

    def body(stack: contextlib.ExitStack) -> dict[str, Any]:
        server_cpu, load_cpu = scenario.cpus(args.pin)
        server = start_bare_hypercorn(scenario.tempdir(stack, "storm-floor"), cpu=server_cpu)
        stack.callback(server.stop)
        loadgen = LoadGen(
            host=server.host, port=server.port, path=server.path, clients=args.clients, cpu=load_cpu
        )
        stack.callback(loadgen.close)
        first = loadgen.connect(all_at_once=True, timeout=120.0)
        return {
            "scenario": "storm_floor",
            "server": "bare_hypercorn",
            "clients": args.clients,
            "pinned": bool(args.pin),
            "established": first["established"],
            "connect_failed": first["failed"],
            "all_established_s": first["all_established_s"],
            **stats.summary_ms(first["connect_hist"], "connect"),
        }

    return scenario.run("storm_floor", body, timeout_s=300.0)


if __name__ == "__main__":
    sys.exit(main())
