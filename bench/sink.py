"""The bench's upstream: aiosmtpd that accepts everything and counts deliveries (one per RCPT).

Prints 'listening on 127.0.0.1:PORT' on stderr. On stdin, 'wait N SECONDS' answers
on stdout, as JSON, once N recipients were delivered or SECONDS passed:
{"count": delivered recipients, "last": time.monotonic() of the last delivery}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiosmtpd.smtp import SMTP


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.changed = asyncio.Event()

    async def handle_DATA(self, server, session, envelope) -> str:
        self.count += len(envelope.rcpt_tos)
        self.last = time.monotonic()
        self.changed.set()
        return f"250 2.0.0 Ok: queued as B{self.count}"


async def main() -> None:
    loop = asyncio.get_running_loop()
    counter = Counter()
    server = await loop.create_server(lambda: SMTP(counter, hostname="sink.bench", loop=loop), "127.0.0.1", 0)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        _, wanted, seconds = line.split()
        deadline = time.monotonic() + float(seconds)
        while counter.count < int(wanted) and time.monotonic() < deadline:
            counter.changed.clear()
            try:
                await asyncio.wait_for(counter.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        print(json.dumps({"count": counter.count, "last": counter.last}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
