"""The benchmark suite runs end to end at a tiny size (``run_all --smoke``).

One subprocess runs every scenario (real gateway, origin, load-generator
processes, nginx+nchan when installed); each of its JSON lines is then
checked here: the keys a reader of the results relies on are present, the
fan-out scenarios lost nothing, and whatever went through the gateway cost
the origin exactly one connection.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.run_all import smoke_runs

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 90.0

FANOUT_KEYS = {
    "deliveries",
    "deliveries_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "lost",
    "server_cpu_us_per_delivery",
    "server_rss_per_conn_kib",
    "upstream_connections",
}
KEYS = {
    "fanout": FANOUT_KEYS | {"server", "clients"},
    "h2_streams": FANOUT_KEYS | {"streams", "connections"},
    "backend_load": {
        "upstream_connections",
        "upstream_cpu_s",
        "direct_upstream_connections",
        "direct_upstream_cpu_s",
        "events",
        "lost",
        "direct_lost",
    },
    "connect_storm": {
        "all_established_s",
        "connect_p99_ms",
        "reconnect_p99_ms",
        "lost",
        "upstream_connections",
    },
    "storm_floor": {"all_established_s", "connect_p99_ms", "established", "connect_failed"},
}
SCENARIO_OF = {
    "fanout": "fanout",
    "floor": "fanout",
    "peer_nchan": "fanout",
    "h2_streams": "h2_streams",
    "backend_load": "backend_load",
    "connect_storm": "connect_storm",
    "storm_floor": "storm_floor",
}
RUNS = smoke_runs()


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    stdout = done.stdout.decode(errors="replace")
    stderr = done.stderr.decode(errors="replace")
    parsed = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert len(parsed) == len(RUNS), f"{stdout}\n--- stderr ---\n{stderr[-6000:]}"
    return parsed


@pytest.mark.parametrize(("index", "script"), [(i, run[0]) for i, run in enumerate(RUNS)])
def test_scenario_line(lines: list[dict[str, Any]], index: int, script: str) -> None:
    line = lines[index]
    if script == "peer_nchan" and "skipped" in line:
        assert line["skipped"] == "nchan not installed"
        pytest.skip("nginx with the nchan module is not installed")
    assert "error" not in line, line
    scenario = SCENARIO_OF[script]
    assert line["scenario"] == scenario
    missing = KEYS[scenario] - line.keys()
    assert not missing, f"{script}: missing {sorted(missing)} in {line}"
    if scenario in ("fanout", "h2_streams"):
        assert line["lost"] == 0, line
        assert line["deliveries"] > 0, line
        assert line["connect_failed"] == 0, line
    if scenario == "backend_load":
        assert line["direct_upstream_connections"] == line["clients"], line
    if scenario == "storm_floor":
        assert (line["established"], line["connect_failed"]) == (line["clients"], 0), line
        return  # no origin behind plain hypercorn
    if line.get("server", "gateway") in ("gateway", "floor") or scenario == "backend_load":
        assert line["upstream_connections"] == 1, line
