"""relay.batching: callers that come while a batch runs share the next one, each with its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from relay.batching import Batcher


class Recording:
    """A batch function that holds each batch until released, and records the batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(n) if n < 0 else n * 10 for n in items]


async def test_items_queued_while_a_batch_runs_go_together_within_the_limits() -> None:
    run = Recording()
    batcher = Batcher(run, name="test", max_items=3, weight=lambda n: abs(n), max_weight=100)
    first = batcher.submit(1)
    await asyncio.sleep(0)  # the first batch starts alone
    rest = [batcher.submit(n) for n in (2, 3, 4, 5, 200, 6)]
    run.release.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40, 50, 2000, 60]
    # At most three items a batch; 200 reaches the weight limit and closes its batch.
    assert run.batches == [[1], [2, 3, 4], [5, 200], [6]]


async def test_each_caller_gets_its_own_outcome_and_a_raising_batch_reaches_all() -> None:
    run = Recording()
    run.release.set()
    batcher: Batcher[int, int] = Batcher(run, name="test", max_items=10)
    good, bad = batcher.submit(1), batcher.submit(-1)
    assert await good == 10
    with pytest.raises(ValueError):
        await bad

    async def broken(items: list[int]) -> list[int]:
        raise OSError("disk gone")

    failing: Batcher[int, int] = Batcher(broken, name="test", max_items=10)
    outcomes = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
    assert [type(o) for o in outcomes] == [OSError, OSError]


async def test_a_caller_that_gave_up_is_skipped() -> None:
    run = Recording()
    batcher: Batcher[int, int] = Batcher(run, name="test", max_items=10)
    busy = batcher.submit(1)
    await asyncio.sleep(0)
    gone, kept = batcher.submit(2), batcher.submit(3)
    gone.cancel()
    run.release.set()
    assert await busy == 10 and await kept == 30
    assert run.batches == [[1], [3]]


async def test_lingering_items_wait_for_company_until_an_urgent_one_or_a_flush() -> None:
    run = Recording()
    run.release.set()
    batcher: Batcher[int, int] = Batcher(run, name="test", max_items=10, linger=3600.0)
    lazy = [batcher.submit(n, urgent=False) for n in (1, 2)]
    await asyncio.sleep(0.01)
    assert run.batches == [] and batcher.pending == 2
    assert await batcher.submit(3) == 30  # an urgent one takes them along
    assert run.batches == [[1, 2, 3]] and [f.result() for f in lazy] == [10, 20]
    late = batcher.submit(4, urgent=False)
    await batcher.flush()
    assert late.result() == 40 and run.batches[-1] == [4]


async def test_an_item_put_without_a_future_is_run_with_the_others() -> None:
    run = Recording()
    run.release.set()
    batcher: Batcher[int, int] = Batcher(run, name="test", max_items=10, linger=3600.0)
    batcher.put(1)
    assert run.batches == [] and batcher.pending == 1
    assert await batcher.submit(2) == 20
    assert run.batches == [[1, 2]]
