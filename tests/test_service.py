"""`router serve` under a service manager: readiness, reload and stop reported on the socket
named by `NOTIFY_SOCKET`, which the test binds and reads as systemd would; SIGHUP reloads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from router.cli import reload_on_signal
from router.config.settings import parse_config
from router.io.notify import Notifier
from tests.conftest import ADMIN, Peers, base_config
from tests.test_restart import (  # noqa: F401  (launcher: the fixture)
    START_TIMEOUT,
    Launcher,
    RouterProcess,
    launcher,
    toml_document,
)

MAX_UNIX_PATH = 100  # sun_path holds 108 bytes with its NUL


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket the daemon is told to notify: a path, or an abstract name when the
    temporary directory's path is too long for one."""
    path = tmp_path / "notify.sock"
    address = str(path) if len(str(path)) < MAX_UNIX_PATH else f"@router-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address if address.startswith("/") else "\0" + address[1:])
        sock.setblocking(False)
        yield sock, address
    finally:
        sock.close()


async def receive(sock: socket.socket, process: RouterProcess) -> dict[str, str]:
    """The next datagram, as its fields."""
    try:
        async with asyncio.timeout(START_TIMEOUT):
            data = await asyncio.get_running_loop().sock_recv(sock, 4096)
    except TimeoutError:
        pytest.fail(f"nothing on the notify socket:\n{process.output()}")
    fields = dict(line.split("=", 1) for line in data.decode().splitlines())
    return fields


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


async def test_serve_notifies_ready_reloading_and_stopping_and_sighup_reloads_the_file(
    launcher: Launcher,  # noqa: F811
    peers: Peers,
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, address = notify_socket
    launcher.write_config()
    log = tmp_path / "router.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(launcher.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
            env={**os.environ, "NOTIFY_SOCKET": address},
        )
    daemon = RouterProcess(
        proc,
        log,
        f"http://127.0.0.1:{launcher.public_port}",
        f"http://127.0.0.1:{launcher.debug_port}",
    )
    launcher.running.append(daemon)
    try:
        ready = await receive(sock, daemon)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == (
            f"serving on http://127.0.0.1:{launcher.public_port}, "
            f"debug port 127.0.0.1:{launcher.debug_port}"
        )
        # Ready means listening: the first request after it is answered.
        async with launcher.session.get(daemon.debug + "/healthz") as resp:
            assert resp.status == 200

        config = base_config(peers, tmp_path / "router.db")
        config["server"]["port"] = launcher.public_port
        config["debug"]["port"] = launcher.debug_port
        config["integrations"][0]["url"] = peers.ccsp.url
        launcher.config_path.write_text(toml_document(config))
        sent_at = monotonic_usec()
        proc.send_signal(signal.SIGHUP)
        reloading = await receive(sock, daemon)
        assert reloading["RELOADING"] == "1"
        assert sent_at <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        assert reloading["STATUS"] == f"reloading {launcher.config_path}"
        again = await receive(sock, daemon)
        assert again["READY"] == "1"
        assert again["STATUS"] == ready["STATUS"]
        async with launcher.session.get(
            daemon.public + "/v1/admin/integrations/support-bot",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as resp:
            assert (await resp.json())["url"] == peers.ccsp.url

        # A file with an error: refused, and the manager hears that the daemon is still up.
        launcher.config_path.write_text("[server\n")
        proc.send_signal(signal.SIGHUP)
        assert (await receive(sock, daemon))["RELOADING"] == "1"
        refused = await receive(sock, daemon)
        assert refused["READY"] == "1"
        assert refused["STATUS"].endswith("; the last reload was refused, see the log")

        proc.send_signal(signal.SIGTERM)
        stopping = await receive(sock, daemon)
        assert stopping["STOPPING"] == "1"
        assert await daemon.wait() == 0, daemon.output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=START_TIMEOUT)
    records = [orjson.loads(line) for line in log.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events.count("config_reloaded") == 1
    [reloaded] = [r for r in records if r["event"] == "config_reloaded"]
    assert reloaded["changes"] == {"integrations": {"changed": {"support-bot": ["url"]}}}
    [refusal] = [r for r in records if r["event"] == "config_reload_refused"]
    assert refusal["reasons"][0].startswith(f"{launcher.config_path}: invalid TOML")
    assert events[-1] == "router_stopped"


async def test_a_reload_that_raises_is_logged_and_the_next_sighup_still_reloads() -> None:
    """`reload_on_signal` itself, with a router whose reload fails once, then applies."""
    name = f"router-test-{uuid.uuid4().hex}"
    outcomes: list[bool | Exception] = [RuntimeError("disk on fire"), True]

    class Router:
        public_url = "http://127.0.0.1:8080"
        debug_port = 9090
        config = parse_config({"admin": {"token": "t"}})

        async def reload(self, path: str) -> bool:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            reload_on_signal(Router(), "router.toml", requested, Notifier(f"@{name}"))  # type: ignore[arg-type]
        )
        try:
            with capture_logs() as events:
                statuses = []
                for _ in outcomes[:]:
                    requested.set()
                    async with asyncio.timeout(10):
                        reloading = (await loop.sock_recv(sock, 4096)).decode()
                        ready = (await loop.sock_recv(sock, 4096)).decode()
                    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
                    statuses.append(ready)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    serving = "STATUS=serving on http://127.0.0.1:8080, debug port 127.0.0.1:9090"
    assert statuses == [
        f"READY=1\n{serving}; the last reload was refused, see the log",
        f"READY=1\n{serving}",
    ]
    [failed] = [e for e in events if e["event"] == "config_reload_failed"]
    assert (failed["log_level"], failed["file"]) == ("error", "router.toml")
    assert failed["exc_info"] is True
