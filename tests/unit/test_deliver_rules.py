"""Delivery rules (relay.outbound.deliver, relay.outbound.upstream, relay.outbound.budget): replies, connection limits,
backoff, queue ids, the octet budget; spool ids."""

from __future__ import annotations

import asyncio

from relay.backoff import JITTER, Backoff
from relay.outbound.budget import Budget
from relay.outbound.deliver import classify
from relay.outbound.upstream import Reply, parse_queue_id, too_many_connections
from relay.smtp.spool import new_submission_id


def test_replies_are_classified_like_mailman():
    assert classify(250) == "delivered"
    assert classify(251) == "delivered"
    assert classify(421) == "deferred"
    assert classify(451) == "deferred"
    assert classify(None) == "deferred"  # timeout or connection failure
    assert classify(550) == "failed"
    assert classify(554) == "failed"
    assert classify(552) == "deferred"  # mailbox full: may clear before we give up


def test_replies_that_may_mean_too_many_connections():
    def says(code: int | None, text: str) -> bool:
        return too_many_connections(Reply(code, text, "mta.test"))

    assert says(432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")  # Exchange Online
    assert says(432, "4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending")
    assert says(421, "4.7.0 Too many concurrent SMTP connections; please try again later")
    assert says(451, "4.3.2 System not accepting network messages")
    assert not says(451, "4.3.0 try again later")
    assert not says(450, "4.2.1 mailbox busy")
    assert not says(550, "5.3.2 refused")
    assert not says(None, "TimeoutError: timed out")


def test_backoff_doubles_up_to_the_maximum():
    assert [Backoff(300, 3600).delay(n, 0.0) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]


def test_queue_ids_of_common_mtas():
    assert parse_queue_id("2.0.0 Ok: queued as 4XkV1m2Z3Qz8") == "4XkV1m2Z3Qz8"  # Postfix
    assert parse_queue_id("OK id=1rT5xY-0004Zb-2C") == "1rT5xY-0004Zb-2C"  # Exim
    assert parse_queue_id("2.6.0 <m@x> [InternalId=1224] Queued mail for delivery") == "1224"  # Exchange
    assert parse_queue_id("2.0.0 OK") is None


def test_submission_ids_sort_by_time_and_differ():
    a, b = new_submission_id(1_700_000_000.0), new_submission_id(1_700_000_000.0)
    c = new_submission_id(1_700_000_001.0)
    assert a != b and max(a, b) < c
    assert len(a) == len(c) == 23


async def test_the_octet_budget_serves_in_order_and_a_large_message_alone():
    budget = Budget(100)
    first = await budget.take(60)
    second = await budget.take(40)
    large = asyncio.create_task(budget.take(500))  # more than the total: it will hold all 100
    await asyncio.sleep(0)
    small = asyncio.create_task(budget.take(10))  # would fit once one goes, but comes after
    await asyncio.sleep(0)
    budget.give_back(first)
    await asyncio.sleep(0)
    assert not large.done() and not small.done()  # 40 still in use
    budget.give_back(second)
    assert await large == 100 and budget.used == 100
    await asyncio.sleep(0)
    assert not small.done()
    budget.give_back(100)
    assert await small == 10 and budget.used == 10


async def test_a_cancelled_wait_for_octets_lets_the_next_one_in():
    budget = Budget(100)
    held = await budget.take(90)
    blocked = asyncio.create_task(budget.take(50))
    await asyncio.sleep(0)
    behind = asyncio.create_task(budget.take(10))
    await asyncio.sleep(0)
    assert not behind.done()  # fits, but waits behind the first in line
    blocked.cancel()
    assert await behind == 10 and budget.used == 100
    budget.give_back(held)
    budget.give_back(10)
    assert budget.used == 0


def test_backoff_jitter_only_shortens_a_wait_by_at_most_its_share():
    backoff = Backoff(300, 3600)
    waits = [backoff.delay(3, draw / 10) for draw in range(10)]
    assert waits[0] == 1200 and all(1200 * (1 - JITTER) <= w <= 1200 for w in waits)
    assert len(set(waits)) == 10  # retries made due together spread out
