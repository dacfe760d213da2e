"""Fan-out: N subscribers of one topic, one upstream connection.

``python -m benchmarks.fanout --clients N --rate R|max --duration S [--pin]``

Sequence: start the origin (:mod:`benchmarks.upstream`) and the gateway (temp
config, ``fd://``); read the gateway's RSS; connect N clients (at most 256
connecting at a time) and wait until each got its first bytes; wait 1 s idle
and read RSS again; read the gateway's CPU time; publish for S seconds (at R
events/s, or closed loop "max": a burst whenever every client has all but
fewer than ``--window`` events); wait until every client has the last event
(or ``--drain-timeout``); read CPU time again.

Reported (one JSON line):

- ``deliveries``: events received, summed over clients; ``deliveries_per_s``
  = deliveries / max(publishing period, last receive - first publish);
- ``latency_p50_ms`` / ``_p99_ms`` / ``_max_ms``: publish -> receive, over
  every delivery (the origin stamps CLOCK_MONOTONIC into the data);
- ``lost``: events published while the client was connected that it never
  got, summed; ``lost_tail`` is the part after the last event each client
  did get (still in flight when ``--drain-timeout`` ran out: late rather
  than skipped, if ``drain_timed_out``); ``clients_with_loss``, ``dups``,
  ``disconnects`` by cause;
- ``server_cpu_us_per_delivery``: (utime + stime of the server process from
  /proc/<pid>/stat, after - before the publishing) / deliveries. On loopback
  this includes kernel work done in the sender's context for the receiving
  side too, for every server alike; ``server_cpu_kernel_share`` is the stime
  part;
- ``server_rss_per_conn_kib``: (VmRSS idle after connects - VmRSS before) / N;
- ``upstream_connections``: connections the origin accepted (must be 1);
  ``upstream_cpu_s``, ``loadgen_cpu_s``: the other processes' CPU over the
  same interval, to show they were not the bottleneck;
- ``events_per_read``: deliveries per client read; above 1 means the server
  coalesced events into one write.

With ``--pin`` the server runs under ``taskset -c 0`` and everything else on
core 1. ``--profile DIR`` records py-spy and perf against the server while it
publishes (:mod:`benchmarks.profiling`); the profilers take CPU time on the
load generator's core. :mod:`benchmarks.floor`, :mod:`benchmarks.peer_nchan` and
:mod:`benchmarks.h2_streams` run this same procedure against other servers or
over HTTP/2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import profiling, scenario, stats
from benchmarks.loadgen import LoadGen
from benchmarks.proc import cpu_seconds, cpu_times, rss_kib
from benchmarks.servers import Server, start_floor, start_gateway, start_nchan
from benchmarks.upstream import OriginHandle

IDLE_BEFORE_RSS_S = 1.0


def add_arguments(parser: argparse.ArgumentParser, *, clients_flag: str = "--clients") -> None:
    parser.add_argument(clients_flag, dest="clients", type=int, default=1000)
    parser.add_argument("--rate", default="10", help="events/s, or 'max' (closed loop)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    parser.add_argument("--window", type=int, default=1, help="max rate: events in flight")
    parser.add_argument("--pin", action="store_true", help="server on core 0, the rest on 1")
    parser.add_argument("--workers", type=int, default=None, help="load generator processes")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record py-spy (and perf, if installed) against the server while publishing",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to wait for the last event"
    )


def start_server(
    stack: contextlib.ExitStack, kind: str, *, cpu: int | None, load_cpu: int | None, clients: int
) -> tuple[Server, OriginHandle]:
    tmp = scenario.tempdir(stack, kind)
    if kind == "nchan":
        server = start_nchan(tmp, cpu=cpu)
        stack.callback(server.stop)
        origin = OriginHandle(cpu=load_cpu, post=(server.host, server.port, "/pub"))
        stack.callback(origin.close)
        return server, origin
    origin = OriginHandle(cpu=load_cpu)
    stack.callback(origin.close)
    if kind == "floor":
        server = start_floor(tmp, upstream_port=origin.port, cpu=cpu)
    else:
        server = start_gateway(tmp, upstream_port=origin.port, cpu=cpu, clients=clients)
    stack.callback(server.stop)
    return server, origin


def run_fanout(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    *,
    server_kind: str,
    name: str = "fanout",
    h2_connections: int = 0,
) -> dict[str, Any]:
    rate = scenario.parse_rate(args.rate)
    server_cpu, load_cpu = scenario.cpus(args.pin)
    server, origin = start_server(
        stack, server_kind, cpu=server_cpu, load_cpu=load_cpu, clients=args.clients
    )
    scenario.log(f"{name}: {server_kind} pid {server.pid} on {server.host}:{server.port}")
    rss_before = rss_kib(server.pid)
    loadgen = LoadGen(
        host=server.host,
        port=server.port,
        path=server.path,
        clients=args.clients,
        workers=args.workers,
        kind="h2" if h2_connections else "h1",
        h2_connections=h2_connections,
        cpu=load_cpu,
        feedback_port=origin.feedback_port if rate is None else None,
    )
    stack.callback(loadgen.close)
    connected = loadgen.connect(timeout=120.0)
    scenario.log(f"{name}: {connected['established']} established in {connected['phase_s']}s")
    if server_kind != "nchan":
        origin.wait_streams(1, timeout=10.0)
    time.sleep(IDLE_BEFORE_RSS_S)
    rss_after = rss_kib(server.pid)
    user0, sys0 = cpu_times(server.pid)
    origin0 = origin.stats()["cpu_s"]
    loadgen0 = sum(cpu_seconds(pid) for pid in loadgen.pids)
    origin.start_publish(
        rate=rate, duration_s=args.duration, window=args.window, workers=loadgen.workers
    )
    profilers: list[Any] = []
    if args.profile:
        # Skip the first second (ramp-up) and stop before publishing does.
        time.sleep(1.0)
        seconds = max(1.0, args.duration - 2.0)
        profilers = profiling.start(server.pid, Path(args.profile), name, seconds, load_cpu)
        stack.callback(profiling.wait, profilers, 0.0)
    published = origin.wait_published(args.duration + 60.0)
    if profilers:
        profiling.wait(profilers, 30.0)
    drained = loadgen.drain(published["last_seq"], timeout=args.drain_timeout)
    user1, sys1 = cpu_times(server.pid)
    loadgen1 = sum(cpu_seconds(pid) for pid in loadgen.pids)
    origin_stats = origin.stats()
    deliveries = int(drained["deliveries"])
    # From the first publish to the last receive, but at least the publishing
    # period (at a fixed rate the last event leaves one interval before its end).
    elapsed = max(
        1e-9, published["publish_s"], (drained["last_rx_ns"] - published["started_ns"]) / 1e9
    )
    server_cpu_s = (user1 - user0) + (sys1 - sys0)
    result: dict[str, Any] = {
        "scenario": name,
        "server": server_kind,
        "transport": "h2c" if h2_connections else "http/1.1",
        "clients": args.clients,
        "rate": "max" if rate is None else rate,
        "window": args.window if rate is None else None,
        "duration_s": args.duration,
        "pinned": bool(args.pin),
        "loadgen_workers": loadgen.workers,
        "established": connected["established"],
        "connect_failed": connected["failed"],
        "connect_s": connected["phase_s"],
        "published": published["published"],
        "publish_rate": published["publish_rate"],
        "window_stalls": published["window_stalls"],
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / elapsed, 1) if deliveries else 0.0,
        **stats.summary_ms(drained["latency_hist"], "latency"),
        "lost": drained["lost"],
        "lost_tail": drained["lost_tail"],
        "drain_timed_out": bool(drained["drain_timed_out"]),
        "clients_with_loss": drained["clients_with_loss"],
        "dups": drained["dups"],
        "foreign_events": drained["foreign_events"],
        "disconnects": drained["disconnects"],
        "errors": {**connected["errors"], **drained["errors"]},
        "events_per_read": round(deliveries / drained["reads"], 2) if drained["reads"] else None,
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_kernel_share": (
            round((sys1 - sys0) / server_cpu_s, 2) if server_cpu_s > 0 else None
        ),
        "server_cpu_us_per_delivery": (
            round(server_cpu_s * 1e6 / deliveries, 2) if deliveries else None
        ),
        # What one fully busy core would deliver at this cost.
        "deliveries_per_server_cpu_s": round(deliveries / server_cpu_s) if server_cpu_s else None,
        "server_rss_before_kib": rss_before,
        "server_rss_per_conn_kib": round((rss_after - rss_before) / max(1, args.clients), 2),
        "upstream_connections": origin_stats["connections_total"],
        "upstream_cpu_s": round(origin_stats["cpu_s"] - origin0, 2),
        "loadgen_cpu_s": round(loadgen1 - loadgen0, 2),
        # Above ~0.9 with --pin, the load generator's core is the limit, not the server.
        "loadgen_cores_busy": round((loadgen1 - loadgen0) / elapsed, 2),
    }
    if profilers:
        summary = profiling.summarize(Path(args.profile), name)
        scenario.log(f"profile: {json.dumps(summary, indent=1)}")
        result["profile_dir"] = str(Path(args.profile).resolve())
    if h2_connections:
        result["connections"] = h2_connections
    if server_kind == "nchan":
        result["post_statuses"] = origin_stats.get("post_statuses")
        result["post_errors"] = origin_stats.get("post_errors")
    return result


def main(argv: list[str] | None = None, *, server_kind: str = "gateway") -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    timeout = 240.0 + args.duration + args.drain_timeout

    def body(stack: contextlib.ExitStack) -> dict[str, Any]:
        return run_fanout(stack, args, server_kind=server_kind)

    return scenario.run("fanout", body, timeout_s=timeout)


if __name__ == "__main__":
    sys.exit(main())
