"""The relay as the bench runs it: `estampille serve` with an SMTP upstream (the bench sink),
its data directory under --work, logging at the default level (INFO).

With --uncertified, the certify step is bypassed: each copy is the received message as is
(CRLF line endings), with no DKIM signature and no acknowledgment link, and everything else
is the relay's own code: the relay core alone, to compare with the uncertified baseline.
Only the bench does this; the relay itself always certifies.

$BENCH_UPSTREAM_EXTRA, if set, is appended to the [upstream] table (TOML lines such as
"concurrency = 16"), to try settings without editing this file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from relay import cli
from relay.certify.certifier import Certified, Prepared
from relay.certify.message import to_crlf
from relay.outbound import deliver


def uncertified(job, certifier, prepared, original, now, eight_bit_mime):
    """Deliverer._certify without certifying: the copy is the received message as is (CRLF).

    Everything around it is the relay's own: the preparation cache shared by a message's
    recipients, the copy stored with its delivery record in one transaction, the sending.
    """
    if prepared is None:
        prepared = Prepared(data=to_crlf(original), root=None, keys=None, policy=None, message_id=job.message_id or "")
    copy = Certified(data=prepared.data, sha256=hashlib.sha256(prepared.data).hexdigest(), links=(),
                     ack_link_inserted=False, ack_link_reason="bench: uncertified", dkim=(),
                     message_id=prepared.message_id)
    return copy, prepared


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--uncertified", action="store_true")
    parser.add_argument("--bounce-domain", default="", help="[dsn] bounce_domain: each copy asks for reports")
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
{os.environ.get("BENCH_UPSTREAM_EXTRA", "")}
[tracker]
enabled = false
[anchor]
enabled = false
[dsn]
bounce_domain = "{args.bounce_domain}"
""",
        encoding="utf-8",
    )
    if args.uncertified:
        deliver.Deliverer._certify = staticmethod(uncertified)
    return cli.main(["serve", "--config", str(config)])


if __name__ == "__main__":
    sys.exit(main())
