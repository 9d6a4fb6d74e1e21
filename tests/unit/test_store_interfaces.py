"""The store implements every subsystem's Protocol, with the same signatures: a second
backend is written against those Protocols, and callers see no difference."""

from __future__ import annotations

import inspect

import pytest

from relay.store import INTERFACES, Store


def _members(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, staticmethod))]


@pytest.mark.parametrize("protocol", INTERFACES, ids=lambda p: p.__name__)
def test_the_store_has_each_method_of_the_protocol_with_its_signature(protocol):
    members = _members(protocol)
    assert members, f"{protocol.__name__} declares no method"
    for name in members:
        declared = inspect.signature(getattr(protocol, name))
        implemented = inspect.signature(getattr(Store, name))
        assert str(implemented) == str(declared), name
        assert inspect.iscoroutinefunction(getattr(Store, name)) == inspect.iscoroutinefunction(
            getattr(protocol, name)
        ), name


def test_every_public_query_of_the_store_is_in_a_protocol():
    declared = {name for protocol in INTERFACES for name in _members(protocol)}
    own = {"open", "close", "transaction", "write", "write_fn", "fetchall", "fetchone"}
    public = {name for name, _ in inspect.getmembers(Store, callable) if not name.startswith("_")}
    assert public - own - declared == set()
