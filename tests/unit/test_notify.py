"""sd_notify: the datagram systemd receives, on a real Unix socket."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest

from relay.ops import notify
from relay.ops.notify import Notifier


@pytest.fixture
def manager():
    """A Unix datagram socket standing in for systemd's notification socket."""
    with tempfile.TemporaryDirectory(prefix="notify-") as tmp:  # short path: AF_UNIX names are <108 bytes
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield path, sock
        finally:
            sock.close()


def test_ready_and_stopping_reach_the_manager(manager):
    path, sock = manager
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.ready("listening on 127.0.0.1:2525")
    assert sock.recv(4096).decode().splitlines() == ["READY=1", "STATUS=listening on 127.0.0.1:2525"]
    assert notifier.stopping()
    assert sock.recv(4096).decode().splitlines()[0] == "STOPPING=1"


def test_abstract_socket_name():
    name = f"estampille-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).send(READY=1)
        assert sock.recv(4096) == b"READY=1"


def test_outside_systemd_nothing_is_sent():
    assert Notifier.from_environ({}).ready("x") is False


def test_a_vanished_manager_does_not_raise(tmp_path):
    assert Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")}).stopping() is False


async def test_a_long_start_step_keeps_extending_the_start_timeout(manager, monkeypatch):
    path, sock = manager
    sock.setblocking(False)
    monkeypatch.setattr(notify, "EXTEND_EVERY", 0.05)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    async with notifier.extending_start("migrating"):
        await asyncio.sleep(0.01)  # shorter than EXTEND_EVERY: nothing to ask for
    await asyncio.sleep(0.1)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)

    async with notifier.extending_start("migrating"):
        await asyncio.sleep(0.22)
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode().splitlines())
        except BlockingIOError:
            break
    assert len(received) >= 2  # 4 on time, fewer if the machine is slow
    assert all(lines == ["EXTEND_TIMEOUT_USEC=30000000", "STATUS=migrating"] for lines in received)
    await asyncio.sleep(0.1)  # and none once the step is over
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
