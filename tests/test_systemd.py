"""operations.systemd.notify on a real AF_UNIX datagram socket, as systemd's $NOTIFY_SOCKET is."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

from operations.systemd import NOTIFY_ENV, notify


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def test_lines_arrive_as_one_datagram(listener):
    path, sock = listener
    assert notify("READY=1", "STATUS=connected as @kith_bot", env={NOTIFY_ENV: path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=connected as @kith_bot"


def test_the_environment_is_read_by_default(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv(NOTIFY_ENV, path)
    assert notify("STOPPING=1")
    assert sock.recv(4096) == b"STOPPING=1"


def test_an_abstract_socket_is_named_with_at():
    name = f"kith-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("STATUS=telegram: connecting", env={NOTIFY_ENV: "@" + name})
        assert sock.recv(4096) == b"STATUS=telegram: connecting"


def test_without_the_variable_nothing_is_sent(tmp_path):
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={NOTIFY_ENV: ""}) is False


def test_a_socket_that_is_gone_is_a_warning_not_an_error(tmp_path, caplog):
    path = tmp_path / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    os.unlink(path)
    assert notify("READY=1", env={NOTIFY_ENV: str(path)}) is False
    assert any("systemd notify (READY) failed" in r.getMessage() for r in caplog.records)
