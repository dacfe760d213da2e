"""``sse-gateway`` (also ``python -m gateway``): run, check, demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.logs import setup_logging


def _load(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    print(f"{args.config}: ok ({len(config.topics)} topic(s))")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, json_format=args.log_json)
    config = _load(args.config)
    if config is None:
        print("refusing to start with an invalid configuration", file=sys.stderr)
        return 1
    from gateway.server import run

    return run(config, config_path=args.config)  # read again on SIGHUP


def _cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, json_format=args.log_json)
    from gateway.demo.run import run_demo

    return run_demo(host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-gateway",
        description="One upstream SSE subscription per topic, fanned out to any number of clients.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_logging(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--log-level", default=os.environ.get("SSE_GATEWAY_LOG_LEVEL", "info"))
        sub.add_argument("--log-json", action="store_true", help="one JSON object per log line")

    run = commands.add_parser("run", help="serve the topics of a config file")
    run.add_argument("--config", required=True, help="YAML configuration file")
    add_logging(run)
    run.set_defaults(func=_cmd_run)

    check = commands.add_parser("check", help="validate a config file; non-zero exit if invalid")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_cmd_check)

    demo = commands.add_parser("demo", help="a bundled demo upstream, the gateway and a page")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    add_logging(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
