"""The peer: the same fan-out scenario against nginx + nchan.

``python -m benchmarks.peer_nchan --clients N --rate R|max --duration S [--pin]``

nginx runs as one process (``daemon off; master_process off;
worker_processes 1;``) from a temp dir (its own config, pid file, error log,
temp paths) on a loopback port; subscribers GET ``/sub`` (nchan EventSource),
and the origin process publishes each event as one HTTP POST to ``/pub``
(pipelined on one keep-alive connection), with the same payload, rate or
closed-loop window as for the gateway. Everything measured, and every JSON
field, is as in :mod:`benchmarks.fanout`, plus ``"server": "nchan"``;
``upstream_connections`` counts the publisher's connections. Without nginx or
the nchan module (Debian: ``apt-get install -y nginx libnginx-mod-nchan``) it
prints ``{"scenario": "fanout", "server": "nchan", "skipped": "nchan not
installed"}``.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks import fanout
from benchmarks.servers import nchan_available


def main(argv: list[str] | None = None) -> int:
    if not nchan_available():
        parser = argparse.ArgumentParser()
        fanout.add_arguments(parser)
        parser.parse_args(argv)  # still reject bad arguments
        skipped = {"scenario": "fanout", "server": "nchan", "skipped": "nchan not installed"}
        print(json.dumps(skipped), flush=True)
        return 0
    return fanout.main(argv, server_kind="nchan")


if __name__ == "__main__":
    sys.exit(main())
