"""sd_notify: the datagram systemd receives, on a real Unix socket."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from relay.notify import Notifier


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
