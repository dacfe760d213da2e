"""Backend load: the same N clients directly on the origin, then through the gateway.

``python -m benchmarks.backend_load --clients N [--rate R] [--duration S] [--pin]``

Run 1 (direct): N clients GET the origin itself, which writes every event to
every connection, as a backend without the gateway would. Run 2 (via the
gateway): a fresh origin, the gateway in front of it, the same N clients on
the gateway. Both runs publish the same number of events at the same rate
(R x S) and wait until every client has the last one.

Reported: for each run, the connections the origin accepted and the CPU time
the origin process used while publishing (its own ``getrusage``, finer than
/proc's 10 ms ticks), deliveries and lost events; and the ratio of origin
CPU time, direct / via gateway. ``upstream_connections`` is the via-gateway
count (must be 1); ``direct_upstream_connections`` should be N.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from benchmarks import scenario
from benchmarks.loadgen import LoadGen
from benchmarks.servers import start_gateway
from benchmarks.upstream import OriginHandle


def one_run(
    args: argparse.Namespace, *, via_gateway: bool, count: int | None = None
) -> dict[str, Any]:
    server_cpu, load_cpu = scenario.cpus(args.pin)
    with contextlib.ExitStack() as stack:
        origin = OriginHandle(cpu=load_cpu)
        stack.callback(origin.close)
        host, port, path = "127.0.0.1", origin.port, "/stream"
        if via_gateway:
            tmp = scenario.tempdir(stack, "backend")
            gateway = start_gateway(
                tmp, upstream_port=origin.port, cpu=server_cpu, clients=args.clients
            )
            stack.callback(gateway.stop)
            host, port, path = gateway.host, gateway.port, gateway.path
        loadgen = LoadGen(host=host, port=port, path=path, clients=args.clients, cpu=load_cpu)
        stack.callback(loadgen.close)
        connected = loadgen.connect(timeout=120.0)
        origin.wait_streams(1 if via_gateway else args.clients, timeout=20.0)
        time.sleep(0.5)
        cpu0 = origin.stats()["cpu_s"]
        if count is None:
            origin.start_publish(rate=args.rate, duration_s=args.duration)
        else:
            origin.start_publish(rate=args.rate, count=count)
        published = origin.wait_published(args.duration + 60.0)
        drained = loadgen.drain(published["last_seq"], timeout=15.0)
        origin_stats = origin.stats()
        cpu1 = origin_stats["cpu_s"]
        label = "via gateway" if via_gateway else "direct"
        scenario.log(f"backend_load {label}: {origin_stats['connections_total']} connections")
        return {
            "upstream_connections": origin_stats["connections_total"],
            "upstream_cpu_s": round(cpu1 - cpu0, 3),
            "upstream_bytes": origin_stats["bytes_written"],
            "published": published["published"],
            "deliveries": drained["deliveries"],
            "lost": drained["lost"],
            "connect_failed": connected["failed"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pin", action="store_true")
    args = parser.parse_args(argv)

    def body(stack: contextlib.ExitStack) -> dict[str, Any]:
        direct = one_run(args, via_gateway=False)
        gateway = one_run(args, via_gateway=True, count=direct["published"])
        ratio = (
            direct["upstream_cpu_s"] / gateway["upstream_cpu_s"]
            if gateway["upstream_cpu_s"]
            else None
        )
        return {
            "scenario": "backend_load",
            "clients": args.clients,
            "rate": args.rate,
            "events": direct["published"],
            "pinned": bool(args.pin),
            **{f"direct_{key}": value for key, value in direct.items()},
            **gateway,
            "upstream_cpu_ratio": None if ratio is None else round(ratio, 1),
        }

    return scenario.run("backend_load", body, timeout_s=300.0 + 2 * args.duration)


if __name__ == "__main__":
    sys.exit(main())
