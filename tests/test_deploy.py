"""Deployment files: the systemd units, the Dockerfile and its .dockerignore.

Nothing here needs root, systemd running as init, or a Docker engine:

* the units go through ``systemd-analyze verify`` (a copy whose ExecStart points at this
  virtualenv's real ``sse-gateway``, since verify checks that the binary exists), and their
  directives are read back and compared with what the deployment promises;
* socket activation runs the real gateway under ``systemd-socket-activate`` on fd 3;
* ``MemoryDenyWriteExecute=yes`` is reproduced with the same seccomp rules systemd installs,
  and the real gateway serves a stream under them;
* the Dockerfile is parsed (a build cannot run here), its build context is checked against
  .dockerignore, and its HEALTHCHECK command is run against a real gateway.

``systemd-analyze`` and ``systemd-socket-activate`` come with Debian's ``systemd`` package,
which ``.ci/run`` installs: without them these tests skip, or fail when CI is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import platform
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support.clients import open_sse
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
SERVICE = SYSTEMD / "sse-gateway.service"
SOCKET = SYSTEMD / "sse-gateway.socket"
SOCKET_DROP_IN = SYSTEMD / "socket-activation.conf"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

EXEC_START = "/usr/local/bin/sse-gateway run --config /etc/sse-gateway/config.yaml"
CONTAINER_CONFIG = "/etc/sse-gateway/config.yaml"
CONTAINER_PORT = 8080
# On SIGTERM the gateway ends its streams at once, then hypercorn waits at most 5 s for the
# connections (gateway/server.py, GRACEFUL_TIMEOUT_S); a drain window of 10 s by default is
# planned. systemd must not SIGKILL within either, with a margin.
GRACEFUL_TIMEOUT_S = 5
PLANNED_DRAIN_WINDOW_S = 10


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install -y systemd)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- systemd -----------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}, keeping repeated keys in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):  # continuation: joined with a space, as systemd does
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"not a unit file line: {raw!r}")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def single(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= should appear once, found {found}"
    return found[0]


def installed_script() -> Path:
    """The ``sse-gateway`` console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "sse-gateway"
    if not script.is_file():
        message = f"{script} is missing: install the project (pip install -e .)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return script


def units_for_verify(directory: Path) -> Path:
    """Lay the units out in ``directory`` as in /etc/systemd/system, the ExecStart binary
    replaced by the real installed script; everything else byte for byte. Returns the
    service's path."""
    text = SERVICE.read_text()
    line = f"ExecStart={EXEC_START}"
    assert text.count(line) == 1
    script = installed_script()
    service = directory / SERVICE.name
    binary = EXEC_START.split()[0]
    service.write_text(text.replace(line, "ExecStart=" + EXEC_START.replace(binary, str(script))))
    shutil.copy(SOCKET, directory / SOCKET.name)
    drop_ins = directory / f"{SERVICE.name}.d"
    drop_ins.mkdir()
    shutil.copy(SOCKET_DROP_IN, drop_ins / SOCKET_DROP_IN.name)
    return service


def verify(*units: Path) -> list[str]:
    """Run ``systemd-analyze verify``; return its complaints about our units. It exits 0 on
    unknown keys and unparsable values (it only warns), so the output is what matters. Lines
    about other units (the targets ours pull in, on an odd host) are not ours to judge."""
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if "sse-gateway" in line]
    assert result.returncode == 0 or ours, f"verify failed: {output}"
    return ours


def test_service_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    service = units_for_verify(tmp_path)
    assert verify(service) == []


def test_socket_unit_and_drop_in_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service = units_for_verify(tmp_path)
    assert verify(tmp_path / SOCKET.name, service) == []


def test_service_unit_exposure_stays_low(tmp_path: Path) -> None:
    """``systemd-analyze security`` scores the sandbox 0 (tight) to 10 (none); the unit
    scores 1.4 today. A threshold of 2.0 catches a hardening setting dropped by mistake."""
    analyze = require_tool("systemd-analyze")
    service = units_for_verify(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
    )
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, overall or result.stdout + result.stderr


def test_verify_does_catch_mistakes(tmp_path: Path) -> None:
    """The checks above would pass vacuously if verify's warnings went unseen."""
    service = units_for_verify(tmp_path)
    with service.open("a") as unit:
        unit.write("[Service]\nTimeoutStopSec=soon\nNoSuchSetting=1\n")
    drop_in = tmp_path / f"{SERVICE.name}.d" / SOCKET_DROP_IN.name
    drop_in.write_text(drop_in.read_text() + "\n[Unit]\nRequiresSomething=x\n")
    complaints = "\n".join(verify(service))
    assert "TimeoutStopSec" in complaints or "soon" in complaints
    assert "NoSuchSetting" in complaints
    assert "RequiresSomething" in complaints  # the drop-in is read too

    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / SERVICE.name).write_text(SERVICE.read_text())  # /usr/local/bin: not here
    if not Path(EXEC_START.split()[0]).exists():
        assert "/usr/local/bin/sse-gateway" in "\n".join(verify(missing / SERVICE.name))


SERVICE_DIRECTIVES = {
    "Type": "exec",
    "DynamicUser": "yes",
    "ExecStart": EXEC_START,
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "TimeoutStopSec": "30",
    "LimitNOFILE": "65536",
    "EnvironmentFile": "-/etc/sse-gateway/env",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "SystemCallErrorNumber": "EPERM",
}


def test_service_unit_directives() -> None:
    unit = parse_unit(SERVICE.read_text())
    for key, expected in SERVICE_DIRECTIVES.items():
        assert single(unit, "Service", key) == expected, key
    assert values(unit, "Service", "AmbientCapabilities") in ([], [""])
    assert values(unit, "Service", "SystemCallFilter") == [
        "@system-service",
        "~@privileged @resources",
    ]
    assert "User" not in dict(unit["Service"])  # DynamicUser= allocates it
    restart_sec = single(unit, "Service", "RestartSec")
    assert re.fullmatch(r"[1-9][0-9]*(ms|s)?", restart_sec), restart_sec
    assert int(single(unit, "Service", "TimeoutStopSec")) > (
        GRACEFUL_TIMEOUT_S + PLANNED_DRAIN_WINDOW_S
    )
    assert single(unit, "Install", "WantedBy") == "multi-user.target"


def test_socket_unit_and_drop_in_directives() -> None:
    socket_unit = parse_unit(SOCKET.read_text())
    assert values(socket_unit, "Socket", "ListenStream")
    assert single(socket_unit, "Socket", "Accept") == "no"  # one process, fd 3
    assert single(socket_unit, "Install", "WantedBy") == "sockets.target"
    drop_in = parse_unit(SOCKET_DROP_IN.read_text())
    assert single(drop_in, "Unit", "Requires") == SOCKET.name
    assert single(drop_in, "Unit", "After") == SOCKET.name


async def test_socket_activation_serves_on_fd_3(tmp_path: Path) -> None:
    """What sse-gateway.socket does, with systemd's own tool: the listening socket is bound
    by systemd and inherited as fd 3; the config says fd://3."""
    activate = require_tool("systemd-socket-activate")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"listen": ["fd://3"]},
                "topics": [{"name": "t", "path": "/t", "upstream": "http://127.0.0.1:9/t"}],
            }
        )
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            activate,
            "--listen",
            f"127.0.0.1:{port}",
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # systemd-socket-activate starts the gateway on the first connection, like systemd.
        assert await wait_healthcheck(port, want=0, timeout=20), log.read_text()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await process.wait() == 0, log.read_text()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


# -- MemoryDenyWriteExecute=yes ----------------------------------------------------------------

# (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat) system call numbers.
_SYSCALLS = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}


def _deny_write_execute(
    arch: int, mmap: int, mprotect: int, pkey_mprotect: int, shmat: int
) -> None:
    """Install the seccomp filter systemd installs for MemoryDenyWriteExecute=yes: EPERM for
    mmap() with PROT_WRITE|PROT_EXEC, for mprotect()/pkey_mprotect() with PROT_EXEC, and for
    shmat() with SHM_EXEC. Runs in a wrapper before it execs Python (its source is copied into
    the wrapper, hence the imports here)."""
    import ctypes
    import struct

    ld, jeq, jset, ret, and_ = 0x20, 0x15, 0x45, 0x06, 0x54
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    arg2 = 16 + 2 * 8  # low 32 bits of args[2] in struct seccomp_data (little endian)
    program: list[tuple[str, int, str, str, int]] = [
        # (label, code, jump if true, jump if false, k); BPF only jumps forward.
        ("", ld, "", "", 4),
        ("", jeq, "", "allow", arch),
        ("", ld, "", "", 0),
        ("", jeq, "mmap", "", mmap),
        ("", jeq, "exec", "", mprotect),
        ("", jeq, "exec", "", pkey_mprotect),
        ("", jeq, "shmat", "allow", shmat),
        ("mmap", ld, "", "", arg2),
        ("", and_, "", "", 0x2 | 0x4),  # PROT_WRITE | PROT_EXEC
        ("", jeq, "deny", "allow", 0x2 | 0x4),
        ("exec", ld, "", "", arg2),
        ("", jset, "deny", "allow", 0x4),  # PROT_EXEC
        ("shmat", ld, "", "", arg2),
        ("", jset, "deny", "allow", 0o100000),  # SHM_EXEC
        ("deny", ret, "", "", deny),
        ("allow", ret, "", "", allow),
    ]
    labels = {label: index for index, (label, *_) in enumerate(program) if label}

    def offset(index: int, label: str) -> int:
        return labels[label] - index - 1 if label else 0

    code = b"".join(
        struct.pack("HBBI", op, offset(i, true), offset(i, false), k)
        for i, (_, op, true, false, k) in enumerate(program)
    )
    buffer = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or (
        libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0
    ):
        raise SystemExit(f"seccomp unavailable: errno {ctypes.get_errno()}")


def mdwe_python(tmp_path: Path) -> Path:
    """An executable that installs the filter, then execs this interpreter with its args."""
    syscalls = _SYSCALLS.get(platform.machine())
    if not sys.platform.startswith("linux") or syscalls is None:
        pytest.skip(f"no seccomp syscall table for {sys.platform}/{platform.machine()}")
    wrapper = tmp_path / "python-mdwe"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        + textwrap.dedent(inspect.getsource(_deny_write_execute))
        + f"_deny_write_execute(*{syscalls!r})\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    probe = subprocess.run([wrapper, "-c", "pass"], capture_output=True, text=True, check=False)
    if "seccomp unavailable" in probe.stderr:
        pytest.skip(probe.stderr.strip())
    assert probe.returncode == 0, probe.stderr
    return wrapper


def test_mdwe_filter_refuses_writable_executable_memory(tmp_path: Path) -> None:
    """The control: under the wrapper, W+X memory really is refused."""
    wrapper = mdwe_python(tmp_path)
    attempts = {
        "mmap": "import mmap; mmap.mmap(-1, 4096, prot=7)",
        "mprotect": (
            "import ctypes, mmap; m = mmap.mmap(-1, 4096); libc = ctypes.CDLL(None); "
            "a = ctypes.addressof(ctypes.c_char.from_buffer(m)); "
            "raise SystemExit(0 if libc.mprotect(ctypes.c_void_p(a), 4096, 5) == 0 else 13)"
        ),
    }
    for name, code in attempts.items():
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
        assert plain.returncode == 0, f"{name} should work without the filter"
        refused = subprocess.run([wrapper, "-c", code], capture_output=True, check=False)
        assert refused.returncode != 0, f"{name} was not refused"


async def test_gateway_streams_under_memory_deny_write_execute(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    wrapper = mdwe_python(tmp_path)
    config = {"topics": [{"name": "t", "path": "/t", "upstream": upstream.url("/t")}]}
    async with GatewayProcess(config, tmp_path=tmp_path, python=str(wrapper)) as gateway:
        status = await asyncio.to_thread(Path(f"/proc/{gateway.pid}/status").read_text)
        assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status
        stream = await open_sse(gateway.url("/t"))
        try:
            await upstream.wait_connections("/t", 1)
            upstream.publish("/t", "hello", id="1")
            [event] = await stream.wait_events(1)
            assert (event.id, event.data) == ("1", "hello")
        finally:
            await stream.aclose()
        assert await gateway.stop() == 0, gateway.log_text()


# -- Dockerfile --------------------------------------------------------------------------------


@dataclass
class Instruction:
    name: str  # upper case
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, name: str) -> Instruction | None:
        found = [i for i in self.instructions if i.name == name]
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages and instructions; continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments, also inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        name, _, args = " ".join(part for part in pending if part).partition(" ")
        instructions.append(Instruction(name.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.name == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias))
        else:
            assert stages, f"line {instruction.line}: {instruction.name} before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """Leading ``--flag=value`` options of an instruction, and the rest."""
    flags: dict[str, str] = {}
    while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s+", args):
        flags[match.group(1)] = match.group(2) or ""
        args = args[match.end() :]
    return flags, args


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form (a JSON array): {args}"
    assert all(isinstance(v, str) for v in value), args
    return [str(v) for v in value]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_dockerfile_bases_are_slim_python(stages: list[Stage]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = tuple(int(n) for n in re.findall(r"\d+", project["requires-python"]))
    names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.base in names:
            continue  # built on an earlier stage
        match = re.fullmatch(
            r"python:(\d+)\.(\d+)-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?", stage.base
        )
        assert match, f"not a slim Python image: {stage.base}"
        assert (int(match.group(1)), int(match.group(2))) >= minimum


def test_dockerfile_runtime_settings(final: Stage) -> None:
    user = final.last("USER")
    assert user is not None, "the final stage must set USER"
    name = user.args.split(":")[0]
    assert name not in ("", "root", "0"), user.args
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert exec_form(entrypoint.args) == ["sse-gateway"]
    assert "sse-gateway" in scripts
    assert exec_form(cmd.args) == ["run", "--config", CONTAINER_CONFIG]
    stop = final.last("STOPSIGNAL")
    assert stop is not None
    assert stop.args == "SIGTERM"
    expose = final.last("EXPOSE")
    assert expose is not None
    assert expose.args.split() == [str(CONTAINER_PORT)]
    env = " ".join(i.args for i in final.instructions if i.name == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)


def healthcheck(final: Stage) -> tuple[dict[str, str], list[str]]:
    instruction = final.last("HEALTHCHECK")
    assert instruction is not None, "the final stage needs a HEALTHCHECK"
    flags, rest = split_flags(instruction.args)
    kind, _, command = rest.partition(" ")
    assert kind == "CMD", "HEALTHCHECK CMD [...]"
    return flags, exec_form(command)


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]


def test_dockerfile_healthcheck_probes_healthz(final: Stage) -> None:
    flags, command = healthcheck(final)
    assert command[:2] == ["python", "-c"], command
    assert len(command) == 3, command
    snippet = command[2]
    assert f"http://127.0.0.1:{CONTAINER_PORT}/healthz" in snippet
    assert "urllib" in snippet
    assert "curl" not in snippet
    interval, timeout = seconds(flags["interval"]), seconds(flags["timeout"])
    assert 0 < timeout < interval
    assert "start-period" in flags
    assert int(flags["retries"]) >= 1
    client_timeout = re.search(r"timeout=(\d+(?:\.\d+)?)", snippet)
    assert client_timeout
    assert float(client_timeout.group(1)) < timeout


async def run_healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, verbatim but for the port; its exit code."""
    _, command = healthcheck(parse_dockerfile(DOCKERFILE.read_text())[-1])
    address = f"127.0.0.1:{CONTAINER_PORT}"
    assert command[2].count(address) == 1
    snippet = command[2].replace(address, f"127.0.0.1:{port}")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        snippet,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return await process.wait()


async def wait_healthcheck(port: int, *, want: int, timeout: float) -> bool:
    """Run the healthcheck until its exit code is (want == 0) or is not (want != 0) zero."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if (await run_healthcheck(port) == 0) == (want == 0):
            return True
        await asyncio.sleep(0.2)
    return False


async def test_dockerfile_healthcheck_command_tracks_the_gateway(tmp_path: Path) -> None:
    """Exit 0 while the gateway runs (even with its only upstream down), non-zero once it
    stopped."""
    unused = f"http://127.0.0.1:{free_port()}/stream"
    config = {"topics": [{"name": "t", "path": "/t", "upstream": unused, "eager": True}]}
    gateway = GatewayProcess(config, tmp_path=tmp_path)
    async with gateway:
        assert await run_healthcheck(gateway.port) == 0, gateway.log_text()
    assert gateway.returncode == 0
    assert await run_healthcheck(gateway.port) != 0


# -- build context -----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            out, i = out + "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]", end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 2
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((keep, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last rule matching
    the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for keep, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not keep
    return excluded


def context_sources(stages: list[Stage]) -> Iterator[tuple[Instruction, str]]:
    """Every path an instruction takes from the build context."""
    for stage in stages:
        for instruction in stage.instructions:
            flags, rest = split_flags(instruction.args)
            if instruction.name in ("COPY", "ADD") and "from" not in flags:
                words = exec_form(rest) if rest.startswith("[") else rest.split()
                for source in words[:-1]:
                    if not re.match(r"[a-z]+://|git@", source):
                        yield instruction, source
            elif instruction.name == "RUN":
                for mount in re.findall(r"--mount=(\S+)", instruction.args):
                    options = dict(o.partition("=")[::2] for o in mount.split(","))
                    if options.get("type", "bind") == "bind" and "from" not in options:
                        yield instruction, options.get("source", ".")


def test_dockerfile_copies_only_what_the_context_has(stages: list[Stage]) -> None:
    rules = dockerignore()
    sources = list(context_sources(stages))
    assert sources, "the Dockerfile copies nothing from the context"
    for instruction, source in sources:
        where = f"line {instruction.line}: {instruction.name} {source}"
        relative = posixpath.normpath(source).lstrip("/")
        matches = sorted(ROOT.glob(relative)) if relative != "." else [ROOT]
        assert matches, f"{where}: not in the repository"
        for match in matches:
            path = match.relative_to(ROOT).as_posix()
            assert path == "." or not ignored(path, rules), f"{where}: .dockerignore drops it"
            for file in match.rglob("*") if match.is_dir() else []:
                inside = file.relative_to(ROOT).as_posix()
                if file.is_file() and "__pycache__" not in inside and file.suffix != ".pyc":
                    assert not ignored(inside, rules), f"{where}: .dockerignore drops {inside}"


def test_dockerignore_keeps_the_context_small() -> None:
    rules = dockerignore()
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "benchmarks/run_all.py",
        ".mypy_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        ".hypothesis/x",
        "gateway/__pycache__/app.cpython-311.pyc",
        "sse_gateway.egg-info/PKG-INFO",
        "config.yaml",
        "systemd/sse-gateway.service",
    ):
        assert ignored(path, rules), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "gateway/app.py", "gateway/static"):
        assert not ignored(path, rules), path


# -- the example config ------------------------------------------------------------------------


def test_example_config_passes_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", "config.example.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "BACKEND_TOKEN": "deploy-test",
            "JWT_SECRET": "deploy-test-secret-of-at-least-32-bytes",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "config.example.yaml: ok" in result.stdout
