"""SIGTERM with thousands of open streams: every stream ends within the drain
window and the process exits within the window plus a second, on Python 3.11,
3.12 and 3.13 (hypercorn's own graceful shutdown hangs on 3.12 with the asyncio
worker while a stream is open: hypercorn#308, DESIGN.md §5).

Each interpreter gets its own virtualenv (``.venv-py3XX`` at the repo root,
kept between runs), with the gateway installed from this checkout."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.clients import RawSSEClient
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 2000
DRAIN_S = 2.0


def interpreter(version: str) -> str:
    if sys.version.startswith(version + "."):
        return sys.executable
    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python3")) or [
        path
        for path in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}")
        if os.path.exists(path)
    ]
    if not found:
        message = f"python {version} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1]


def venv_python(version: str) -> str:
    """A virtualenv for ``version`` with this checkout installed in it."""
    base = interpreter(version)
    if base == sys.executable:
        return base
    venv = ROOT / f".venv-py{version.replace('.', '')}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    pyproject = ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < pyproject.stat().st_mtime:
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-e", str(ROOT)],
            check=True,
            timeout=600,
        )
        stamp.touch()
    return str(python)


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
async def test_sigterm_drains_thousands_of_streams_in_time(
    version: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    python = await asyncio.to_thread(venv_python, version)
    config = {
        "server": {"drain_window_s": DRAIN_S},
        "limits": {"max_connections_per_ip": 2 * STREAMS},
        "stream": {"retry_min_ms": 1000, "retry_max_ms": 1000},
        "topics": [{"name": "t", "path": "/t", "upstream": upstream.url("/t")}],
    }
    async with GatewayProcess(config, tmp_path=tmp_path, python=python) as gateway:
        clients: list[RawSSEClient] = []
        for start in range(0, STREAMS, 200):
            clients += await asyncio.gather(
                *(
                    RawSSEClient.connect(gateway.host, gateway.port, "/t")
                    for _ in range(start, min(STREAMS, start + 200))
                )
            )
        assert all(client.status == 200 for client in clients)
        await upstream.wait_connections("/t", 1)
        upstream.publish("/t", "before", id="1")
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)

        async def ended(client: RawSSEClient) -> float:
            # the end of the response (the last chunk), not of the connection:
            # that is what makes an EventSource reconnect
            body = await client.read_until(b"\r\n0\r\n\r\n", timeout=DRAIN_S + 5)
            assert b"retry: 1000\n\n" in body
            return time.monotonic() - started

        ended_at = await asyncio.gather(*(ended(client) for client in clients))
        assert await gateway.wait_exit(timeout=DRAIN_S + 5) == 0
        exited = time.monotonic() - started
        assert exited <= DRAIN_S + 1.0, f"exit took {exited:.2f} s on {version}"
        assert max(ended_at) <= DRAIN_S + 0.6
        # spread over the window, not all at once
        assert (
            sorted(ended_at)[len(ended_at) // 10]
            < DRAIN_S / 2
            < sorted(ended_at)[-len(ended_at) // 10]
        )
        for client in clients:
            await client.close()
