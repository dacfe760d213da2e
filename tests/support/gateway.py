"""Run the real gateway (``python -m gateway run --config FILE``) as a child process.

End-to-end tests must exercise the gateway exactly as it is deployed: its own process, its own
event loop, a YAML config, a listening socket. :class:`GatewayProcess` binds that socket here
first and hands it over as ``fd://N``, so the port is known before the child starts and no
other process can take it in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import ctypes.util
import itertools
import os
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

__all__ = ["GatewayProcess", "GatewayStartError"]

_HEALTH_POLL_S = 0.05  # nothing notifies us when the child is ready; poll at this pace
_LOG_TAIL = 6000
# A gateway that failed to start gets this long to exit on SIGTERM before SIGKILL.
_FAILED_START_GRACE_S = 2.0
_counter = itertools.count(1)


# Every gateway log of the session, for the redaction check in tests/conftest.py.
ALL_LOGS: list[Path] = []


class GatewayStartError(RuntimeError):
    """The gateway exited or never answered ``/healthz`` with 200; carries its log tail."""


def _make_preexec() -> Callable[[], None] | None:
    """Ask Linux to SIGKILL the child when this process dies, whatever way it dies.

    atexit and finalizers do not run on SIGKILL or os._exit (pytest-timeout's thread method),
    and an orphaned gateway would keep its port and confuse every later run.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _reap_or_kill(pid: int) -> None:
    """Finalizer: SIGKILL the child's process group if the child is still running.

    waitpid() first, so a pid that was already reaped (and might be reused by now) is never
    signalled: for a pid that is not our child it fails with ECHILD.
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if done == 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _parse_listen(entry: str) -> tuple[str, int] | None:
    if entry.startswith("fd://") or ":" not in entry:
        return None
    host, _, port = entry.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return host, int(port)


class GatewayProcess:
    """The real gateway in a child process, on a socket pre-bound by the test.

    ``start()`` writes the config (``config`` is deep-copied; ``server.listen`` becomes
    ``["fd://N"]`` unless the caller set it), spawns the CLI with stdout and stderr going to a log
    file under ``tmp_path``, and returns once ``GET /healthz`` answers 200. ``stop()`` sends
    SIGTERM, then SIGKILL after ``timeout``. It can be started again after a stop, on the same
    port. The child is killed if the test process dies without stopping it.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        tmp_path: Path,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        name: str | None = None,
    ) -> None:
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        self.tmp_path = tmp_path
        self.env = dict(env or {})
        self.python = python
        self.name = name or f"gateway-{next(_counter)}"
        self.config_path = tmp_path / f"{self.name}.yaml"
        self.log_path = tmp_path / f"{self.name}.log"
        ALL_LOGS.append(self.log_path)
        self.port = 0
        # Decided once: after the first start() our own fd:// entry is in the config, and a
        # restart must pre-bind again rather than mistake it for the caller's choice.
        self._explicit_listen = bool(self.config.get("server", {}).get("listen"))
        self._process: asyncio.subprocess.Process | None = None
        self._finalizer: weakref.finalize[[int], GatewayProcess] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("gateway not started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def url(self, path: str) -> str:
        if self.port == 0:
            raise RuntimeError("GatewayProcess.url() before start(): the port is not known yet")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def start(self, timeout: float = 15.0) -> None:
        """Spawn the gateway and wait until ``/healthz`` answers 200 (``GatewayStartError``
        with the log tail if it exits first or does not get there within ``timeout``)."""
        if self.running:
            raise RuntimeError("gateway already running")
        server = self.config.setdefault("server", {})
        listener: socket.socket | None = None
        if self._explicit_listen:
            entries = [_parse_listen(str(entry)) for entry in server["listen"]]
            endpoint = next((entry for entry in entries if entry is not None), None)
            if endpoint is None:
                raise ValueError("an explicit server.listen needs a host:port entry to probe")
            self.host, self.port = endpoint
        else:
            # Bind here, in the test process, and pass the socket down: the port is ours from
            # this moment, with no window in which another process could grab it. A restart
            # rebinds the same port (SO_REUSEADDR lets it past TIME_WAIT leftovers).
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self.port))
                listener.listen(1024)
            except BaseException:
                listener.close()
                raise
            self.port = int(listener.getsockname()[1])
            server["listen"] = [f"fd://{listener.fileno()}"]
        try:
            self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
            await self._spawn(listener)
        finally:
            # The child has its own copy now. Dropping ours means that when the gateway dies
            # the port refuses connections, as it would in production, instead of queueing them.
            if listener is not None:
                listener.close()
        await self._wait_healthy(timeout)

    async def _spawn(self, listener: socket.socket | None) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # so log_text() sees lines as they are printed
        # Tests only talk to loopback; a proxy from the environment must not intercept that.
        no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1,localhost,::1"]))
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        env.update(self.env)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name}: starting with {self.config_path}\n".encode())
            log.flush()
            self._process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self.config_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),) if listener is not None else (),
                env=env,
                # Own process group: stop() can take down any workers the gateway forks, and
                # a Ctrl-C at the terminal reaches pytest, which then stops us in order.
                start_new_session=True,
                preexec_fn=_make_preexec(),
            )
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap_or_kill, self._process.pid)

    async def _wait_healthy(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        exited = asyncio.ensure_future(process.wait())
        probe: asyncio.Future[httpx.Response] | None = None
        last_problem = "no answer to GET /healthz yet"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
                try:
                    async with asyncio.timeout(timeout):
                        while True:
                            probe = asyncio.ensure_future(client.get(self.url("/healthz")))
                            # Race each probe against the child exiting, so a crash at startup
                            # fails at once instead of after the whole timeout.
                            await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
                            if exited.done():
                                raise GatewayStartError(
                                    f"{self.name} exited with {process.returncode} during "
                                    f"startup\n{self._log_tail()}"
                                )
                            try:
                                response = probe.result()
                            except httpx.HTTPError as exc:
                                last_problem = repr(exc)
                            else:
                                if response.status_code == 200:
                                    return
                                last_problem = f"/healthz answered {response.status_code}"
                            # Nothing announces readiness, so polling is the only option.
                            await asyncio.sleep(_HEALTH_POLL_S)
                finally:
                    # A probe still in flight must not outlive its client (or the test).
                    if probe is not None:
                        probe.cancel()
                        await asyncio.gather(probe, return_exceptions=True)
        except TimeoutError:
            await self.stop(timeout=_FAILED_START_GRACE_S)
            raise GatewayStartError(
                f"{self.name} not healthy within {timeout}s ({last_problem})\n" + self._log_tail()
            ) from None
        except BaseException:
            await self.stop(timeout=_FAILED_START_GRACE_S)
            raise
        finally:
            exited.cancel()
            await asyncio.gather(exited, return_exceptions=True)

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code (negative for
        a signal, as asyncio reports it; 0 if it was never spawned). Idempotent; also kills
        leftover members of the gateway's process group."""
        process = self._process
        if process is None:
            return 0  # never spawned: nothing to stop (keeps cleanup paths simple)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await process.wait()
            except TimeoutError:
                self._kill_group()
                await process.wait()
        # Workers the gateway may have forked die with it here, not at interpreter exit.
        self._kill_group()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        assert process.returncode is not None
        return process.returncode

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the gateway to exit on its own (e.g. after a signal); return its code."""
        process = self._process
        if process is None:
            raise RuntimeError("gateway never started")
        try:
            async with asyncio.timeout(timeout):
                return await process.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} still running after {timeout}s\n{self._log_tail()}"
            ) from None

    def _kill_group(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self._process is None:
            raise RuntimeError("gateway not started")
        self._process.send_signal(sig)

    async def __aenter__(self) -> GatewayProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            await self.stop()

    # -- logs --------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the gateway printed so far (stdout and stderr interleaved)."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        """Wait until the log contains ``needle``; return the log. The log is a file, which
        gives nothing to await, so this polls."""
        try:
            async with asyncio.timeout(timeout):
                # A file offers nothing to await, hence the polling loop.
                while needle not in (text := self.log_text()):  # noqa: ASYNC110
                    await asyncio.sleep(_HEALTH_POLL_S)
                return text
        except TimeoutError:
            raise TimeoutError(
                f"{needle!r} not in {self.name}'s log after {timeout}s\n{self._log_tail()}"
            ) from None

    def _log_tail(self) -> str:
        text = self.log_text()
        tail = text[-_LOG_TAIL:]
        prefix = "...\n" if len(text) > len(tail) else ""
        return f"--- {self.name} log ({self.log_path}) ---\n{prefix}{tail}"
