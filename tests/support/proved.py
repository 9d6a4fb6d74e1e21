"""A convocation proved end to end, for the proof tests: the real relay (SMTP intake,
certify, delivery to a sink, tracker), 3 recipients, Bob acknowledges through the page's
POST, and the records are anchored on a local calendar.

    async with proved_message(tmp_path) as p:
        p.base, p.token, p.store, p.calendar ...
        await p.anchor()            # batch + submit: pending at the calendar
        height = await p.confirm()  # a block is mined and the upgrade grafts it
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib

from relay.anchor import worker as anchor
from relay.config import Config
from relay.service import Service
from relay.store import Store
from tests.support.calendar import EsploraFake, FakeCalendar, FakeChain
from tests.support.polling import until
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tracker.admin_auth import new_token

RECIPIENTS = ["alice@example.net", "bob@example.net", "carol@example.net"]
ACKNOWLEDGER = "bob@example.net"
MESSAGE_ID = "<convocation-2026-12@mairie.example>"
SUBJECT = "Convocation au conseil municipal du 3 décembre"
DEADLINE = 20.0
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def convocation(recipients: list[str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie <convocations@mairie.example>"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = MESSAGE_ID
    msg.set_content("Mesdames et Messieurs les conseillers,\n\nvous êtes convoqués le 3 décembre à 18 h.\n")
    return msg.as_bytes()


async def acknowledge(session: aiohttp.ClientSession, link: str) -> None:
    """What a person does: open the link, press the button."""
    async with session.get(link, headers={"User-Agent": BROWSER}) as r:
        page = await r.text()
    form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', page).group(1)
    async with session.post(link, data={"form_key": form_key}, headers={"User-Agent": BROWSER},
                            allow_redirects=False) as r:
        assert r.status in (200, 303), await r.text()


@dataclass
class Proved:
    service: Service
    config: Config
    calendar: FakeCalendar
    explorers: tuple[str, str]
    token: str
    data_dir: Path

    @property
    def store(self) -> Store:
        assert self.service.store is not None
        return self.service.store

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service.tracker.port}"

    async def anchor(self) -> None:
        await anchor.anchor_now(self.store, self.config.anchor, self.config.tsa)

    async def confirm(self) -> int:
        height = self.calendar.confirm()
        await anchor.anchor_now(self.store, self.config.anchor, self.config.tsa)
        return height


@contextlib.asynccontextmanager
async def proved_message(
    tmp_path: Path,
    *,
    recipients: list[str] = RECIPIENTS,
    acknowledgers: tuple[str, ...] = (ACKNOWLEDGER,),
    replies: dict[str, list[str]] | None = None,
    header_sources: bool = True,
    clock: Callable[[], float] = time.time,
    **sections: dict,
) -> AsyncIterator[Proved]:
    """The relay running, the message delivered to every recipient, ``acknowledgers`` acknowledged.

    ``replies`` scripts the sink's answers per recipient (e.g. a 451 before the 250).
    ``header_sources=False`` leaves the explorers out of the relay's configuration: its
    batches stay 'attested' (unchecked); ``p.explorers`` still serve the chain. ``clock`` is the
    relay's (the times its records claim); anchoring (``p.anchor()``) keeps the real one.
    """
    chain = FakeChain()
    token, token_hash = new_token()
    data_dir = tmp_path / "data"
    async with FakeCalendar(chain) as calendar, EsploraFake(chain) as e1, EsploraFake(chain) as e2, Sink() as sink:
        config = relay_config(
            data_dir, sink.port,
            tracker={"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0,
                     "public_url": "http://127.0.0.1:1", "scanner_window": 0},
            anchor={"enabled": False, "calendars": [calendar.url], "min_calendars": 1, "http_for_tests": True,
                    "esplora": [e1.url, e2.url] if header_sources else [], "regtest": True},
            admin={"token_hashes": [token_hash]},
            **sections,
        )
        for rcpt, answers in (replies or {}).items():
            sink.script(rcpt, answers)
        async with running(config, clock=clock) as service:
            p = Proved(service, config, calendar, (e1.url, e2.url), token, data_dir)
            await aiosmtplib.send(convocation(recipients), sender="convocations@mairie.example", recipients=recipients,
                                  hostname="127.0.0.1", port=service.smtp_port)
            got = await sink.wait_for(len(recipients))
            async with aiohttp.ClientSession() as session:
                for rcpt in acknowledgers:
                    copy = next(m for m in got if m.rcpt_tos == (rcpt,)).data
                    path = re.search(rb"http://127\.0\.0\.1:1(/a/[A-Za-z0-9_-]+)", copy).group(1).decode()
                    await acknowledge(session, p.base + path)
            store = p.store
            n_acks, n_rcpts = len(acknowledgers), len(recipients)
            for table in ("receipts", "fetches"):  # one acknowledgment and one page fetch per acknowledger
                sql = f"SELECT 1 FROM {table} GROUP BY NULL HAVING COUNT(*) = ?"
                await until(lambda: store.fetchone(sql, (n_acks,)), table)  # noqa: B023 - awaited in this iteration
            await until(lambda: store.fetchone("SELECT 1 FROM deliveries WHERE state = 'delivered'"
                                               " GROUP BY submission_id HAVING COUNT(*) = ?", (n_rcpts,)), "deliveries")
            yield p
