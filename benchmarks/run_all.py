"""Run every benchmark scenario, one after another, and print each one's JSON line
as it completes.

``python -m benchmarks.run_all``           the sizes of the issue (about 10 minutes)
``python -m benchmarks.run_all --smoke``   every scenario at a tiny size (CI, < 60 s)
``python -m benchmarks.run_all --only fanout --only floor``   a subset, by script name

Each scenario runs as its own ``python -m benchmarks.<script>`` process with a
time bound; a scenario that fails or times out prints
``{"scenario", "error"}`` instead (and the exit status is 1), and the rest
still run. Full-size runs are pinned (``--pin``: the server on core 0, the
origin and load generator on core 1), so server figures are per core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

Run = tuple[str, list[str]]


def _fanout_sizes(clients: list[int], duration: str, pin: list[str]) -> list[list[str]]:
    return [
        ["--clients", str(n), "--rate", rate, "--duration", duration, *pin]
        for n in clients
        for rate in ("10", "max")
    ]


def full_runs() -> list[Run]:
    pin = ["--pin"]
    runs: list[Run] = []
    for script in ("fanout", "floor", "peer_nchan"):
        runs += [(script, args) for args in _fanout_sizes([1000, 10000], "10", pin)]
    runs += [
        ("backend_load", ["--clients", "10000", "--duration", "5", *pin]),
        ("connect_storm", ["--clients", "10000", *pin]),
        ("storm_floor", ["--clients", "10000", *pin]),
    ]
    for rate in ("10", "max"):
        h2 = ["--streams", "1000", "--connections", "10", "--rate", rate, "--duration", "10"]
        runs.append(("h2_streams", [*h2, *pin]))
    return runs


def smoke_runs() -> list[Run]:
    small = ["--clients", "20", "--duration", "1.5"]
    return [
        ("fanout", [*small, "--rate", "10"]),
        ("fanout", [*small, "--rate", "max"]),
        ("floor", [*small, "--rate", "max"]),
        ("peer_nchan", [*small, "--rate", "10"]),
        ("peer_nchan", [*small, "--rate", "max"]),
        ("backend_load", small),
        ("connect_storm", ["--clients", "50", "--hold", "1"]),
        ("storm_floor", ["--clients", "50"]),
        (
            "h2_streams",
            ["--streams", "20", "--connections", "2", "--rate", "10", "--duration", "1.5"],
        ),
    ]


def run_one(script: str, args: list[str], timeout: float) -> tuple[str, bool]:
    """Run one scenario; return its JSON line and whether it succeeded."""
    command = [sys.executable, "-m", f"benchmarks.{script}", *args]
    print(f"run_all: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    try:
        # stderr passes through: scenarios log their progress there.
        done = subprocess.run(command, stdout=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        # subprocess.run killed it; its children die with it (PR_SET_PDEATHSIG).
        return json.dumps({"scenario": script, "args": args, "error": "timeout"}), False
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    if len(lines) != 1:
        error = f"expected one JSON line, got {len(lines)} (exit {done.returncode})"
        return json.dumps({"scenario": script, "args": args, "error": error}), False
    try:
        result = json.loads(lines[0])
    except json.JSONDecodeError:
        return json.dumps({"scenario": script, "args": args, "error": "not JSON"}), False
    result["args"] = args
    return json.dumps(result), done.returncode == 0 and "error" not in result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--only", action="append", default=[], help="script name (repeatable)")
    args = parser.parse_args(argv)
    runs = smoke_runs() if args.smoke else full_runs()
    if args.only:
        runs = [run for run in runs if run[0] in args.only]
    timeout = 60.0 if args.smoke else 600.0
    ok = True
    started = time.monotonic()
    try:
        for script, script_args in runs:
            line, success = run_one(script, script_args, timeout)
            ok = ok and success
            print(line, flush=True)
    except KeyboardInterrupt:  # the running scenario got it too and cleaned up
        print("run_all: interrupted", file=sys.stderr, flush=True)
        return 130
    elapsed = time.monotonic() - started
    print(f"run_all: {len(runs)} scenario(s) in {elapsed:.0f}s", file=sys.stderr, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
