"""Imports point one way, down the data flow; sans-IO modules stay sans-IO."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import gateway

SANS_IO = (
    "gateway.sse",
    "gateway.config",
    "gateway.topics",
    "gateway.errors",
    "gateway.ring",
    "gateway.cors",
    "gateway.limits",
    "gateway.tickets",
)


def test_every_module_imports() -> None:
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if module.name != "gateway.__main__":
            importlib.import_module(module.name)


def test_sans_io_modules_do_not_import_asyncio() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in SANS_IO)
        + "print('asyncio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
