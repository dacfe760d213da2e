"""What every scenario script shares: one JSON line on stdout, cleanup, a time bound.

:func:`run` calls the scenario body with an :class:`~contextlib.ExitStack` on
which it registers every process and temp dir it creates; whatever happens
(an exception, Ctrl-C, SIGTERM, or the overall ``timeout_s`` via SIGALRM),
the stack unwinds, so servers, origins and load generators are stopped, and
exactly one JSON line is printed: the result, or ``{"scenario", "error"}``.
Diagnostics go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.proc import pin, raise_nofile

Result = dict[str, Any]


class ScenarioTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise ScenarioTimeout("scenario exceeded its time bound")


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tempdir(stack: contextlib.ExitStack, prefix: str) -> Path:
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-")))


def cpus(pinned: bool) -> tuple[int | None, int | None]:
    """(server's core, everyone else's core) for ``--pin``; also pins this process."""
    if not pinned:
        return None, None
    pin(1)
    return 0, 1


def parse_rate(text: str) -> float | None:
    """``max`` (closed loop) or events per second."""
    if text == "max":
        return None
    rate = float(text)
    if rate <= 0:
        raise ValueError("--rate must be > 0 or 'max'")
    return rate


def run(name: str, body: Callable[[contextlib.ExitStack], Result], *, timeout_s: float) -> int:
    raise_nofile()
    signal.signal(signal.SIGTERM, _on_term)
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(timeout_s)))
    code = 0
    result: Result
    try:
        with contextlib.ExitStack() as stack:
            result = body(stack)
    except KeyboardInterrupt:
        result = {"scenario": name, "error": "interrupted"}
        code = 130
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    finally:
        signal.alarm(0)
    print(json.dumps(result), flush=True)
    return code
