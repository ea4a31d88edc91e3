"""The service manager's notifications, against sockets the test binds: a path, an abstract
name, none at all, and one nobody listens on."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from router.io.notify import Notifier


@pytest.fixture
def abstract() -> Iterator[tuple[socket.socket, str]]:
    name = f"router-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield sock, f"@{name}"


def fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_each_state_is_one_datagram_on_an_abstract_socket(
    abstract: tuple[socket.socket, str],
) -> None:
    sock, address = abstract
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("serving\non 8080")
    assert fields(sock) == ["READY=1", "STATUS=serving on 8080"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading router.toml")
    reloading, usec, status = fields(sock)
    assert reloading == "RELOADING=1"
    assert usec.startswith("MONOTONIC_USEC=")
    assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= before + 5_000_000
    assert status == "STATUS=reloading router.toml"
    assert notifier.stopping("stopping")
    assert fields(sock) == ["STOPPING=1", "STATUS=stopping"]
    assert notifier.status("still here")
    assert fields(sock) == ["STATUS=still here"]


def test_a_socket_path(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    if len(str(path)) >= 100:
        pytest.skip("the temporary directory's path is too long for a socket path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        assert Notifier(str(path)).ready("up")
        assert fields(sock) == ["READY=1", "STATUS=up"]


def test_without_notify_socket_nothing_is_sent() -> None:
    with capture_logs() as events:
        notifier = Notifier.from_environment({})
        assert not notifier.enabled
        assert not notifier.ready("up")
        assert not Notifier.from_environment({"NOTIFY_SOCKET": ""}).enabled
    assert events == []


def test_a_socket_nobody_listens_on_is_logged_and_never_raises(tmp_path: Path) -> None:
    with capture_logs() as events:
        assert not Notifier(str(tmp_path / "gone.sock")).stopping("stopping")
    [line] = events
    assert (line["event"], line["log_level"], line["state"]) == (
        "notify_failed",
        "warning",
        "STOPPING",
    )


def test_an_address_of_another_family_is_named_once_and_ignored() -> None:
    with capture_logs() as events:
        notifier = Notifier("vsock:2:1234")
        assert not notifier.enabled
        assert not notifier.ready("up")
    assert [(e["event"], e["notify_socket"]) for e in events] == [
        ("notify_socket_unsupported", "vsock:2:1234")
    ]
