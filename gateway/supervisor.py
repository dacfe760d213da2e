"""``server.workers: N``: N worker processes on the same listening sockets.

The supervisor (the process started as ``sse-gateway run``) binds every listening
socket once (:func:`gateway.server.open_listeners`), then starts N workers. Each
worker is an independent gateway: its own event loop, hypercorn, hub and upstream
subscriptions (so an upstream sees up to N connections per topic instance). A
worker is ``python -c "...worker_main()"`` with the sockets passed as inherited
file descriptors and its settings (the already validated configuration, pickled)
on stdin, so every worker runs exactly the configuration the supervisor loaded.

- A worker that dies is replaced (immediately, or after a backoff of up to
  :data:`RESTART_BACKOFF_MAX_S` when workers keep dying young). A worker that exits
  with :data:`EXIT_FATAL` (its configuration cannot work) stops the whole gateway.
- SIGTERM and SIGINT are forwarded to every worker; the supervisor exits once all
  have exited, SIGKILLing any still running after :data:`STOP_MARGIN_S` past the drain window.
- SIGHUP is forwarded to every worker; each reads the configuration file again
  and reloads its TLS certificate (see :mod:`gateway.server`).
- Workers get SIGTERM if the supervisor itself dies (Linux ``PR_SET_PDEATHSIG``).

hypercorn's own multi-worker runner is not used: it shuts every worker down as soon
as one exits with an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.logs import JSONFormatter, setup_logging

log = logging.getLogger("gateway.supervisor")

EXIT_FATAL = 3
# Between SIGTERM and SIGKILL for workers, past their drain window.
STOP_MARGIN_S = 10.0
# A worker that lived shorter than this counts as failing; repeated failures back off.
HEALTHY_UPTIME_S = 10.0
RESTART_BACKOFF_MAX_S = 10.0
_TICK_S = 0.5
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_WORKER_BOOT = "from gateway.supervisor import worker_main; worker_main()"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs, sent pickled on its stdin."""

    index: int
    config: GatewayConfig
    index_page: bytes | None
    listeners: tuple[tuple[int, bool], ...]  # (inherited fd, TLS?)
    log_level: int
    log_json: bool
    supervisor_pid: int
    config_path: str | None  # read again by each worker on SIGHUP


@dataclass(slots=True)
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


def supervise(
    config: GatewayConfig, *, index_page: bytes | None, config_path: str | None = None
) -> int:
    from gateway.server import open_listeners

    count = config.server.workers
    per_worker = open_listeners(
        config.server.listen, secure=config.server.tls is not None, copies=count
    )
    root = logging.getLogger()
    log_json = any(isinstance(handler.formatter, JSONFormatter) for handler in root.handlers)
    specs = [
        WorkerSpec(
            index=index,
            config=config,
            index_page=index_page,
            listeners=tuple((item.sock.fileno(), item.secure) for item in listeners),
            log_level=root.level,
            log_json=log_json,
            supervisor_pid=os.getpid(),
            config_path=config_path,
        )
        for index, listeners in enumerate(per_worker)
    ]
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers = [_Worker(index) for index in range(count)]
    # /metrics on any worker reports the sum over all (prometheus_client's
    # multiprocess mode keeps each worker's values in files here).
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned_metrics_dir = None
    if not metrics_dir:
        owned_metrics_dir = metrics_dir = tempfile.mkdtemp(prefix="sse-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        log.info(
            "supervisor (pid %d): %d workers on %s",
            os.getpid(),
            count,
            ", ".join(config.server.listen),
        )
        for worker in workers:
            _start(worker, specs[worker.index])
        return _loop(workers, specs)
    finally:
        _stop_all(workers, config.server.drain_window_s)
        if owned_metrics_dir is not None:
            shutil.rmtree(owned_metrics_dir, ignore_errors=True)
        # Signals that arrived while stopping must not act once unblocked (SIGTERM's
        # default action would end this process with a misleading status).
        while signal.sigtimedwait(_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sock in {item.sock for listeners in per_worker for item in listeners}:
            sock.close()


def _loop(workers: list[_Worker], specs: list[WorkerSpec]) -> int:
    while True:
        info = signal.sigtimedwait(_SIGNALS, _TICK_S)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            log.info(
                "supervisor: %s: stopping %d workers",
                signal.Signals(info.si_signo).name,
                len(workers),
            )
            return 0
        if info is not None and info.si_signo == signal.SIGHUP:
            _refresh_specs(specs)
            for worker in workers:
                if worker.process is not None and worker.process.poll() is None:
                    log.info(
                        "supervisor: SIGHUP forwarded to worker %d (pid %d)",
                        worker.index,
                        worker.process.pid,
                    )
                    worker.process.send_signal(signal.SIGHUP)
        now = time.monotonic()
        for worker in workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                code = process.returncode
                worker.process = None
                # Its live gauges (streams, subscribers) must stop counting.
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                if code == EXIT_FATAL:
                    log.error(
                        "supervisor: worker %d (pid %d) cannot run this configuration: "
                        "stopping the gateway",
                        worker.index,
                        process.pid,
                    )
                    return 1
                uptime = now - worker.started_at
                worker.failures = worker.failures + 1 if uptime < HEALTHY_UPTIME_S else 0
                # The first early death is replaced at once, repeated ones back off.
                delay = (
                    min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** (worker.failures - 2))
                    if worker.failures > 1
                    else 0.0
                )
                worker.restart_at = now + delay
                log.warning(
                    "supervisor: worker %d (pid %d) exited (%s) after %.1f s; restarting in %.1f s",
                    worker.index,
                    process.pid,
                    _describe_exit(code),
                    uptime,
                    delay,
                )
            if (
                worker.process is None
                and worker.restart_at is not None
                and now >= worker.restart_at
            ):
                _start(worker, specs[worker.index])


def _refresh_specs(specs: list[WorkerSpec]) -> None:
    """Workers started from now on (replacements) get the reloaded configuration too.
    Each running worker reads the file itself when it gets the SIGHUP."""
    path = specs[0].config_path if specs else None
    if path is None:
        return
    try:
        config = load_config(path)
    except ConfigError:
        return  # every worker logs the problems; they keep the running configuration
    specs[:] = [dataclasses.replace(spec, config=config) for spec in specs]


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"code {code}"


def _start(worker: _Worker, spec: WorkerSpec) -> None:
    fds = tuple(fd for fd, _ in spec.listeners)
    env = dict(os.environ)
    # The worker imports this package the way the supervisor did, wherever it runs from.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER_BOOT],
        stdin=subprocess.PIPE,
        pass_fds=fds,
        close_fds=True,
        env=env,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died at once: the loop sees the exit and restarts it
    worker.process = process
    worker.started_at = time.monotonic()
    worker.restart_at = None
    worker.pids.append(process.pid)
    log.info("supervisor: worker %d started (pid %d)", worker.index, process.pid)


def _stop_all(workers: list[_Worker], drain_window_s: float) -> None:
    running = [w.process for w in workers if w.process is not None and w.process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + drain_window_s + STOP_MARGIN_S
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("supervisor: worker pid %d still running: SIGKILL", process.pid)
            process.kill()
            process.wait()
    log.info("supervisor: all workers exited")


# -- the worker side --------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the supervisor dies, whatever way it dies."""
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> None:
    """Entry point of a worker process (see :data:`_WORKER_BOOT`)."""
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    setup_logging(logging.getLevelName(spec.log_level), json_format=spec.log_json)
    # The supervisor blocks these to wait for them; the mask survives exec.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _die_with_parent(spec.supervisor_pid)
    raise SystemExit(_run_worker(spec))


def _run_worker(spec: WorkerSpec) -> int:
    import socket

    import uvloop

    from gateway import tls
    from gateway.app import GatewayApp
    from gateway.server import Listener, serve

    listeners = [Listener(socket.socket(fileno=fd), secure) for fd, secure in spec.listeners]
    app = GatewayApp(spec.config, index_page=spec.index_page)
    log.info("worker %d (pid %d): serving", spec.index, os.getpid())
    try:
        uvloop.run(
            serve(
                app,
                spec.config,
                listeners=listeners,
                worker=spec.index,
                config_path=spec.config_path,
            )
        )
    except tls.TLSFilesError as error:
        log.error("worker %d: server.tls: %s", spec.index, error)
        return EXIT_FATAL
    log.info("worker %d (pid %d): exited", spec.index, os.getpid())
    return 0
