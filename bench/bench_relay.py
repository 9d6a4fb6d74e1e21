"""The relay as the bench runs it: `estampille serve` with an SMTP upstream (the bench sink),
its data directory under --work, logging at the default level (INFO)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = args.work / "estampille.toml"
    config.write_text(
        f"""data_dir = "data"
[smtp]
listen_host = "127.0.0.1"
listen_port = 0
min_free_disk_mb = 1
[upstream]
kind = "smtp"
host = "127.0.0.1"
port = {args.sink_port}
tls = "none"
[tracker]
enabled = false
[anchor]
enabled = false
""",
        encoding="utf-8",
    )
    os.execv(sys.executable, [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)])


if __name__ == "__main__":
    main()
