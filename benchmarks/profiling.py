"""Where a server's CPU goes during a benchmark: py-spy and perf, and a summary.

``fanout.py --profile DIR`` starts, once publishing has begun, against the
server's pid and on the load generator's core:

- ``py-spy record --nonblocking --format speedscope`` (Python stacks; the
  server is not paused, so what is measured is not slowed down much). Time
  spent inside a C call (a syscall, uvloop) is charged to the Python line that
  made the call;
- ``perf record -e cpu-clock -g`` when ``perf`` is installed: the split
  between the interpreter, uvloop, libc and the kernel, which py-spy cannot see.

``python -m benchmarks.profiling FILE.speedscope.json [FILE.perf.data]``
prints the summary again: the share of samples by component (of the frame
being executed) and by function, and the inclusive share of the functions on
the gateway's send path. Neither tool is a dependency of the project:
``.venv/bin/pip install py-spy``; ``apt-get install linux-perf``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Functions on the gateway's hot path whose inclusive share is worth a line.
SEND_PATH = (
    "_drain",
    "Subscriber.wait",
    "HTTPStream.app_send",
    "H11Protocol.stream_send",
    "H11Protocol._send_h11_event",
    "Connection.send",
    "TCPServer.protocol_send",
    "StreamWriter.write",
    "StreamWriter.drain",
    "_ContextManagerMixin.__aenter__",
    "_ContextManagerMixin.__aexit__",
    "UpstreamSubscription._dispatch",
    "Subscriber.offer",
    "H2Protocol.stream_send",
    "H2Protocol._flush",
)


def find_tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def start(pid: int, out: Path, name: str, duration_s: float, cpu: int | None) -> list[Any]:
    """Start the profilers; returns their Popen objects (empty if none installed)."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    seconds = str(max(1, int(duration_s)))
    children: list[Any] = []
    py_spy = find_tool("py-spy")
    if py_spy is not None:
        argv = [py_spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "100"]
        argv += ["--duration", seconds, "--format", "speedscope"]
        argv += ["-o", str(out / f"{name}.speedscope.json")]
        children.append(_spawn([*prefix, *argv], out / f"{name}.py-spy.log"))
    perf = shutil.which("perf")
    if perf is not None:
        argv = [perf, "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid)]
        argv += ["-o", str(out / f"{name}.perf.data"), "--", "sleep", seconds]
        children.append(_spawn([*prefix, *argv], out / f"{name}.perf.log"))
    return children


def _spawn(argv: list[str], log: Path) -> Any:
    with log.open("wb") as handle:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle)


def wait(children: list[Any], timeout: float) -> None:
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def component(frame: dict[str, Any]) -> str:
    name, path = frame.get("name", ""), frame.get("file", "")
    if name == "StreamWriter.write":
        return "transport.write (uvloop + kernel send)"
    if name == "Runner.run":  # no Python frame running: uvloop's own C loop
        return "event loop (uvloop C: epoll, callbacks)"
    for part in ("hypercorn", "h11", "h2", "gateway", "httpcore", "httpx", "anyio", "asyncio"):
        if f"/{part}/" in path:
            return part
    return "other"


def summarize_speedscope(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    frames: list[dict[str, Any]] = data["shared"]["frames"]
    by_component: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0.0
    count = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            total += weight
            count += 1
            leaf = frames[stack[-1]]
            by_component[component(leaf)] += weight
            file = Path(leaf.get("file", "?")).name
            by_function[f"{leaf.get('name', '?')} ({file})"] += weight
            for name in {frames[index].get("name", "") for index in stack}:
                if name in SEND_PATH:
                    inclusive[name] += weight

    def shares(counter: Counter[str], limit: int) -> dict[str, float]:
        top = counter.most_common(limit)
        return {key: round(100 * value / total, 1) for key, value in top} if total else {}

    return {
        "samples": count,
        "self_by_component_pct": shares(by_component, 20),
        "self_by_function_pct": shares(by_function, 25),
        "inclusive_pct": shares(inclusive, len(SEND_PATH)),
    }


def summarize_perf(path: Path) -> dict[str, float]:
    """Share of samples per shared object (libpython, kernel, uvloop, ...)."""
    perf = shutil.which("perf")
    if perf is None or not path.exists():
        return {}
    argv = [perf, "report", "-i", str(path), "--no-children", "--sort", "dso", "--stdio"]
    done = subprocess.run([*argv, "-g", "none"], capture_output=True, check=False)
    out: dict[str, float] = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%"):
            out[parts[1]] = float(parts[0].rstrip("%"))
    return out


def summarize(out: Path, name: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    speedscope = out / f"{name}.speedscope.json"
    if speedscope.exists():
        summary["py_spy"] = summarize_speedscope(speedscope)
    perf = summarize_perf(out / f"{name}.perf.data")
    if perf:
        summary["perf_dso_pct"] = perf
    (out / f"{name}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"py_spy": summarize_speedscope(Path(args[0]))}
    if len(args) > 1:
        summary["perf_dso_pct"] = summarize_perf(Path(args[1]))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
