"""``server.workers: N``: independent worker processes on one address, replaced when they die,
reached by SIGHUP and SIGTERM, and a supervisor that exits (bounded) once they have."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import yaml

from gateway.supervisor import STOP_MARGIN_S
from tests.support.clients import RawSSEClient, request
from tests.support.edge import free_port, worker_pids
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

STREAMS = 40
DRAIN_S = 1.0
# Between the supervisor's SIGTERM and its SIGKILL of a worker that did not stop.
STOP_TIMEOUT_S = DRAIN_S + STOP_MARGIN_S


def config(upstream: FakeUpstream, **server: object) -> dict[str, object]:
    return {
        "server": {"workers": 2, "drain_window_s": DRAIN_S, **server},
        "stream": {"retry_min_ms": 1000, "retry_max_ms": 1000},
        "topics": [{"name": "t", "path": "/t", "upstream": upstream.url("/t")}],
    }


async def serving_workers(gateway: GatewayProcess, count: int) -> dict[int, list[int]]:
    """Wait until ``count`` worker starts are logged and that many workers serve."""
    async with asyncio.timeout(20):
        while True:
            text = gateway.log_text()
            pids = worker_pids(text)
            if sum(map(len, pids.values())) >= count and text.count("): serving") >= count:
                return pids
            await asyncio.sleep(0.05)  # the log is a file: nothing to await


async def open_streams(gateway: GatewayProcess, count: int, path: str = "/t") -> list[RawSSEClient]:
    clients = [await RawSSEClient.connect(gateway.host, gateway.port, path) for _ in range(count)]
    assert [c.status for c in clients] == [200] * count
    for client in clients:
        await client.read_until(b"retry:")
    return clients


async def all_receive(upstream: FakeUpstream, streams: list[RawSSEClient], data: str) -> None:
    """Publish ``data`` until every stream has it. Each worker holds its own
    upstream connection, and one may still be connecting when the first event
    is published (streams land on workers as the kernel decides)."""
    waiting = [asyncio.ensure_future(c.read_until(f"data: {data}\n\n".encode())) for c in streams]
    try:
        for n in range(100):
            upstream.publish("/t", data, id=f"{data}-{n}")
            done, _ = await asyncio.wait(waiting, timeout=0.2)
            if len(done) == len(waiting):
                for task in done:
                    task.result()
                return
        raise AssertionError(f"{sum(t.done() for t in waiting)} of {len(waiting)} streams got it")
    finally:
        for task in waiting:
            task.cancel()


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_two_workers_share_the_port_and_a_killed_one_is_replaced(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = GatewayProcess(
        config(upstream, listen=[f"127.0.0.1:{free_port()}"]), tmp_path=tmp_path
    )
    await gateway.start()
    try:
        pids = await serving_workers(gateway, 2)
        first = await open_streams(gateway, STREAMS)
        # Each worker is a gateway of its own: one upstream subscription each.
        await upstream.wait_connections("/t", 2)
        upstream.publish("/t", "to every stream", id="1")
        for client in first:
            await client.read_until(b"data: to every stream\n\n")

        # SIGHUP: each worker reads the file again (here: a topic added).
        topics = gateway.config["topics"]
        topics.append({"name": "n", "path": "/n", "upstream": upstream.url("/n")})
        gateway.config_path.write_text(yaml.safe_dump(gateway.config, sort_keys=False))
        gateway.send_signal(signal.SIGHUP)
        for index in (0, 1):
            await gateway.wait_log(f"SIGHUP: worker {index} (pid {pids[index][0]}): configuration")

        victim = pids[0][0]
        os.kill(victim, signal.SIGKILL)
        replaced = await serving_workers(gateway, 3)
        assert len(replaced[0]) == 2
        assert replaced[0][1] != victim
        assert replaced[1] == pids[1]
        assert not alive(victim)

        upstream.publish("/t", "after the kill", id="2")
        survivors, lost = [], []
        for client in first:
            try:
                await client.read_until(b"data: after the kill\n\n", timeout=5)
            except (EOFError, ConnectionError):
                lost.append(client)
            else:
                survivors.append(client)
        # Streams landed on both workers: those on the killed one are gone, the others live.
        assert survivors
        assert lost
        print(f"streams per worker: {len(survivors)} on the survivor, {len(lost)} on the victim")

        # The replacement runs the reloaded configuration too: /n on both workers.
        second = await open_streams(gateway, STREAMS, "/n")
        await upstream.wait_connections("/n", 2)
        upstream.publish("/t", "after the replacement", id="3")
        upstream.publish("/n", "on the added topic", id="1")
        for client in survivors:
            await client.read_until(b"data: after the replacement\n\n")
        for client in second:
            await client.read_until(b"data: on the added topic\n\n")
        for client in first + second:
            client.abort()
        assert f"worker 0 (pid {victim}) exited (signal SIGKILL)" in gateway.log_text()
    finally:
        await gateway.stop()


async def test_sighup_and_sigterm_reach_every_worker_and_the_exit_is_bounded(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = GatewayProcess(config(upstream), tmp_path=tmp_path)  # a shared fd:// socket
    await gateway.start()
    try:
        pids = await serving_workers(gateway, 2)
        workers = [pids[0][0], pids[1][0]]
        streams = await open_streams(gateway, 6)

        # An invalid file: every worker says so and keeps running what it has.
        gateway.config_path.write_text("topics: []\n")
        gateway.send_signal(signal.SIGHUP)
        for index, pid in enumerate(workers):
            await gateway.wait_log(
                f"SIGHUP: worker {index} (pid {pid}): configuration not reloaded"
            )
            await gateway.wait_log(f"supervisor: SIGHUP forwarded to worker {index} (pid {pid})")
        assert gateway.running
        await all_receive(upstream, streams, "still served")

        # Graceful: every stream is ended cleanly (EOF) within the drain window,
        # and every process is gone within the window plus a second.
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit(timeout=STOP_TIMEOUT_S) == 0
        elapsed = time.monotonic() - started
        for client in streams:
            tail = await client.read_to_eof(timeout=1)
            assert b"retry: " in tail  # each stream got a fresh retry before its end
        assert not any(alive(pid) for pid in workers)
        print(f"SIGTERM to exit with 2 workers and 6 streams: {elapsed:.2f} s")
        assert elapsed < DRAIN_S + 1.5

        # A worker that does not stop (SIGSTOP: it cannot even see SIGTERM) is SIGKILLed
        # after STOP_TIMEOUT_S; the supervisor still exits.
        await gateway.start()
        pids = await serving_workers(gateway, 4)
        workers = [pids[0][1], pids[1][1]]
        os.kill(workers[1], signal.SIGSTOP)
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait_exit(timeout=STOP_TIMEOUT_S + 5) == 0
        elapsed = time.monotonic() - started
        assert STOP_TIMEOUT_S - 0.5 <= elapsed < STOP_TIMEOUT_S + 5
        assert not any(alive(pid) for pid in workers)
        assert f"worker pid {workers[1]} still running: SIGKILL" in gateway.log_text()
    finally:
        await gateway.stop()


async def test_one_process_reloads_its_configuration_on_sighup(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = GatewayProcess(config(upstream, workers=1), tmp_path=tmp_path)
    await gateway.start()
    try:
        (stream,) = await open_streams(gateway, 1)
        gateway.config["topics"].append({"name": "n", "path": "/n", "upstream": upstream.url("/n")})
        gateway.config_path.write_text(yaml.safe_dump(gateway.config, sort_keys=False))
        gateway.send_signal(signal.SIGHUP)
        await gateway.wait_log(f"SIGHUP: pid {gateway.pid}: configuration reloaded")
        (added,) = await open_streams(gateway, 1, "/n")
        await upstream.wait_connections("/n", 1)
        upstream.publish("/t", "kept", id="1")
        upstream.publish("/n", "added", id="1")
        await stream.read_until(b"data: kept\n\n")
        await added.read_until(b"data: added\n\n")
        assert "supervisor" not in gateway.log_text()
    finally:
        await gateway.stop()


async def test_metrics_are_summed_over_workers(upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway = GatewayProcess(
        config(upstream, listen=[f"127.0.0.1:{free_port()}"]), tmp_path=tmp_path
    )
    await gateway.start()
    try:
        await serving_workers(gateway, 2)
        streams = await open_streams(gateway, 20)
        # whichever worker answers, it reports both workers' streams
        for _ in range(6):
            status, _, body = await request(gateway.host, gateway.port, "GET", "/metrics")
            assert status == 200
            assert b'sse_gateway_connections{protocol="HTTP/1.1"} 20.0' in body
        for client in streams:
            await client.close()
    finally:
        await gateway.stop()
