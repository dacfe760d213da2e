"""Process plumbing shared by every benchmark.

Nothing here measures by itself; it gives the scenarios what they measure with:
CPU time (``utime + stime`` from ``/proc/<pid>/stat``) and resident memory
(``VmRSS`` from ``/proc/<pid>/status``) of another process, children that die
with the benchmark (``PR_SET_PDEATHSIG``), pinning to one core, the
file-descriptor limit raised to the hard limit, and pre-bound listening sockets
handed to servers as ``fd://N`` so no other process can take the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
# Linux: bind() to a source address without reserving a port; the port is picked
# at connect() time per 4-tuple, so one source address serves more than the
# ephemeral range's worth of connections to different servers.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# hypercorn calls listen() again with its own backlog (100); ours only matters
# for servers that keep it (floor, our origin).
LISTEN_BACKLOG = 4096


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


_PRCTL = _prctl()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, however it dies,
    so an interrupted benchmark never leaves servers or clients behind."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def child_setup(cpu: int | None) -> None:
    """First thing in every multiprocessing child: die with the parent, raise the
    fd limit, pin, and send stray prints to stderr (stdout carries only JSON)."""
    die_with_parent()
    raise_nofile()
    pin(cpu)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` in seconds (resolution: one clock tick, 10 ms)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    user, system = cpu_times(pid)
    return user + system


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def listen_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on a free port, inheritable, for ``fd://N``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for servers that cannot take an fd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _preexec() -> None:  # between fork and exec: keep it minimal
    die_with_parent()
    raise_nofile()


class Child:
    """A server process (gateway, floor, nginx): own session, output to a log
    file, optionally pinned with ``taskset``; :meth:`stop` is idempotent."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cpu: int | None = None,
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        prefix: list[str] = []
        if cpu is not None:
            taskset = shutil.which("taskset")
            if taskset is None:
                raise RuntimeError("--pin needs taskset (util-linux)")
            prefix = [taskset, "-c", str(cpu)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        with log_path.open("ab") as log:
            # taskset execs its command, so the pid we get is the server's own.
            self.process = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                env=full_env,
                start_new_session=True,
                preexec_fn=_preexec,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-limit:]

    def stop(self, timeout: float = 8.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        return process.returncode


def http_get_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status code of a plain GET, or None when nothing answered."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode())
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


def wait_http_ok(child: Child, host: str, port: int, path: str, timeout: float = 20.0) -> None:
    """Poll ``GET path`` until it answers 200 (nothing announces readiness)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"server exited during startup:\n{child.log_tail()}")
        if http_get_status(host, port, path) == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"server not ready on {host}:{port}{path} in {timeout}s:\n{child.log_tail()}"
    )
