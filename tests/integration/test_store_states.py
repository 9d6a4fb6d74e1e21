"""The states of relay.store.states are those the schema's CHECK constraints allow."""

from __future__ import annotations

import re

import pytest

from relay.store import Store
from relay.store.states import BatchState, DeliveryState


@pytest.mark.parametrize(("table", "states"), [("deliveries", DeliveryState), ("anchor_batches", BatchState)])
async def test_each_state_is_one_the_schema_allows(tmp_path, table, states):
    store = await Store.open(tmp_path)
    try:
        (sql,) = await store.fetchone("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    finally:
        await store.close()
    allowed = re.search(r"state\s+TEXT NOT NULL[^,]*?CHECK \(state IN \(([^)]*)\)\)", sql)
    assert allowed is not None, sql
    assert {value.strip(" '") for value in allowed.group(1).split(",")} == {state.value for state in states}
