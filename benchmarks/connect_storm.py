"""Connect storm: N clients connect at once, then all reconnect at once with Last-Event-ID.

``python -m benchmarks.connect_storm --clients N [--hold S] [--pin]``

1. N clients (no pacing: every connect is started in the same loop turn,
   per load-generator process) connect to the gateway. A client is
   *established* when the first body bytes (``: ok``) arrive; its connect time
   runs from just before ``connect()``. Reported: ``all_established_s`` (the
   slowest client), ``connect_p50_ms`` / ``_p99_ms`` / ``_max_ms``,
   ``connect_failed``, errors by kind and ``connect_fail_*_ms`` (connect
   start -> the failure: a reset, an end before any byte).
2. The origin publishes ``--rate`` events/s (default 2) from then on: few
   enough that the storm, not the fan-out, is what loads the gateway
   (10,000 clients x 10 events/s would saturate its core by itself). After ``--hold`` seconds
   every client closes its connection and immediately reconnects with
   ``Last-Event-ID`` = the id of the last event it received. Reported: the same
   figures prefixed ``reconnect_``.
3. After another ``--hold`` seconds publishing stops and each client should
   have every event (1 .. last). ``lost`` counts the events a client never got,
   summed over clients: until the gateway replays missed events on resume,
   events published while a client was reconnecting are lost, and are counted
   honestly; ``foreign_events`` counts events that are not the origin's (a
   gateway's gap signal when a cursor is older than its replay ring). A
   client whose reconnect failed is not retried: its later events count as
   lost. ``upstream_connections`` must stay 1 throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from benchmarks import scenario, stats
from benchmarks.loadgen import LoadGen
from benchmarks.servers import start_gateway
from benchmarks.upstream import OriginHandle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds between phases")
    parser.add_argument("--rate", type=float, default=2.0, help="events/s from phase 2 on")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--pin", action="store_true")
    args = parser.parse_args(argv)

    def body(stack: contextlib.ExitStack) -> dict[str, Any]:
        server_cpu, load_cpu = scenario.cpus(args.pin)
        origin = OriginHandle(cpu=load_cpu)
        stack.callback(origin.close)
        tmp = scenario.tempdir(stack, "storm")
        gateway = start_gateway(
            tmp, upstream_port=origin.port, cpu=server_cpu, clients=args.clients
        )
        stack.callback(gateway.stop)
        loadgen = LoadGen(
            host=gateway.host,
            port=gateway.port,
            path=gateway.path,
            clients=args.clients,
            workers=args.workers,
            cpu=load_cpu,
        )
        stack.callback(loadgen.close)
        first = loadgen.connect(all_at_once=True, timeout=120.0)
        scenario.log(
            f"storm: {first['established']} established, slowest {first['all_established_s']}s"
        )
        origin.wait_streams(1, timeout=10.0)
        origin.start_publish(rate=args.rate, duration_s=None)
        time.sleep(args.hold)
        second = loadgen.reconnect(timeout=120.0)
        scenario.log(
            f"storm: {second['established']} re-established, slowest {second['all_established_s']}s"
        )
        time.sleep(args.hold)
        published = origin.stop_publish()
        drained = loadgen.drain(published["last_seq"], timeout=15.0)
        origin_stats = origin.stats()
        return {
            "scenario": "connect_storm",
            "server": "gateway",
            "clients": args.clients,
            "rate": args.rate,
            "pinned": bool(args.pin),
            "loadgen_workers": loadgen.workers,
            "established": first["established"],
            "connect_failed": first["failed"],
            "all_established_s": first["all_established_s"],
            **stats.summary_ms(first["connect_hist"], "connect"),
            **stats.summary_ms(first["failed_hist"], "connect_fail"),
            "reconnected": second["established"],
            "reconnect_failed": second["failed"],
            "reconnect_all_established_s": second["all_established_s"],
            **stats.summary_ms(second["connect_hist"], "reconnect"),
            **stats.summary_ms(second["failed_hist"], "reconnect_fail"),
            "published": published["published"],
            "deliveries": drained["deliveries"],
            "lost": drained["lost"],
            "clients_with_loss": drained["clients_with_loss"],
            "dups": drained["dups"],
            "foreign_events": drained["foreign_events"],
            "disconnects": drained["disconnects"],
            "errors": {**first["errors"], **second["errors"], **drained["errors"]},
            "upstream_connections": origin_stats["connections_total"],
        }

    return scenario.run("connect_storm", body, timeout_s=400.0 + 2 * args.hold)


if __name__ == "__main__":
    sys.exit(main())
