"""The relay as the bench runs it: `estampille serve` with an SMTP upstream (the bench sink),
its data directory under --work, logging at the default level (INFO).

With --uncertified, each copy is the received message as is (CRLF line endings), with no
DKIM signature and no acknowledgment link: the relay core alone, to compare with the
uncertified baseline. Only the bench does this; the relay itself always certifies.

$BENCH_UPSTREAM_EXTRA, if set, is appended to the [upstream] table (TOML lines such as
"concurrency = 16"), to try settings without editing this file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from relay import cli, deliver, records
from relay.message import to_crlf
from relay.store import Store


async def uncertified_prepare(self, job) -> bytes:
    """Deliverer._prepare without the certify step: the copy is the received bytes, stored with
    its delivery record in one transaction as the real one does."""
    if job.copy_sha256:
        return await self.store.get_blob(job.copy_sha256)
    copy = to_crlf(await self.store.get_blob(job.data_sha256))
    copy_sha256 = await self.store.put_blob(copy)
    now = self.clock()
    record = records.delivery_record(
        submission_digest=job.submission_digest, recipient=job.recipient, copy_sha256=copy_sha256, dkim=[],
        ack_link_inserted=False, ack_link_reason="bench: uncertified", certified_at=records.iso_time(now),
    )

    async def record_copy(db) -> None:
        await Store.insert_record(db, record, submission_id=job.submission_id, delivery_id=job.delivery_id, now=now)
        await Store.set_delivery_copy(db, job.delivery_id, copy_sha256, record.digest, now)

    await self.store.write(record_copy)
    self._record_digests[job.delivery_id] = record.digest
    return copy


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--uncertified", action="store_true")
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
""",
        encoding="utf-8",
    )
    if args.uncertified:
        deliver.Deliverer._prepare = uncertified_prepare
    return cli.main(["serve", "--config", str(config)])


if __name__ == "__main__":
    sys.exit(main())
