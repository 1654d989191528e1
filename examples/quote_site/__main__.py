"""``python -m quote_site [--port 8080]``: serve the quote site until Ctrl-C."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from . import FAILING_PLATE, start_site


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m quote_site", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--estimate-delay", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--shots", type=Path, help="serve robots' screenshots from here")
    args = parser.parse_args()
    site = start_site(
        host=args.host,
        port=args.port,
        estimate_delay_s=args.estimate_delay,
        latency_s=args.latency,
        shots_dir=args.shots,
    )
    print(f"quote site at {site.url} (plate {FAILING_PLATE} fails at screen 9); Ctrl-C stops")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        site.stop()


if __name__ == "__main__":
    main()
