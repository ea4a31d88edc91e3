"""The files that run the router as a service: the systemd unit, the Dockerfile and the
config the image starts with. Read as the tools read them; `systemd-analyze verify` runs
when it is installed. The image itself is not built here (that needs a Docker daemon)."""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from router.cli import main
from router.loadtest.command import free_port
from tests.conftest import Daemon
from tests.test_restart import toml_document

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "router.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKER_CONFIG = ROOT / "deploy" / "router.docker.toml"
DOCKERIGNORE = ROOT / ".dockerignore"
ROUTER_BIN = "/opt/router/.venv/bin/router"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(UNIT)
    return parser


def test_the_unit_is_a_hardened_notify_service() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == f"{ROUTER_BIN} serve --config /etc/router/router.toml" + (
        " --log-format json"
    )
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (service["User"], service["Group"]) == ("router", "router")
    assert service["LimitNOFILE"] == "65536"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a config with problems
    assert int(service["TimeoutStopSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    # The store, and only the store, is writable.
    assert service["StateDirectory"] == "router"
    assert service["ReadWritePaths"] == "/var/lib/router"
    assert service["WorkingDirectory"] == "/var/lib/router"
    # The notify socket is AF_UNIX; the ports and the webhooks are IP.
    families = service["RestrictAddressFamilies"].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert "WatchdogSec" not in service  # the daemon sends no WATCHDOG=1
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit()["Unit"]["After"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """On a copy whose ExecStart is the router installed here: verify checks that the
    command exists, and /opt/router is where it is deployed, not where it is tested."""
    installed = Path(sys.executable).parent / "router"
    assert installed.exists()
    copy = tmp_path / "router.service"
    text = UNIT.read_text()
    assert ROUTER_BIN in text
    copy.write_text(text.replace(ROUTER_BIN, str(installed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "router.service" not in output, output  # no warning about the unit (unknown keys)


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions and their arguments, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def docker_config() -> dict[str, object]:
    with DOCKER_CONFIG.open("rb") as fh:
        return tomllib.load(fh)


def test_the_dockerfile_runs_the_router_as_a_user_with_the_store_on_a_volume() -> None:
    found = instructions()
    given = dict(found)  # the last of each
    words = [w for w, _ in found]
    assert found[0] == ("FROM", "python:3.11-slim")
    assert given["USER"] == "router"
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert given["VOLUME"] == "/var/lib/router"
    assert given["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(given["ENTRYPOINT"]) == ["router"]
    assert json.loads(given["CMD"]) == [
        "serve",
        "--config",
        "/etc/router/router.toml",
        "--log-format",
        "json",
    ]
    assert ("COPY", "deploy/router.docker.toml /etc/router/router.toml") in found
    config = docker_config()
    server, debug, store = config["server"], config["debug"], config["store"]
    assert isinstance(server, dict) and isinstance(debug, dict) and isinstance(store, dict)
    assert given["EXPOSE"] == str(server["port"])
    assert server["host"] == "0.0.0.0"
    # The health check runs inside the container, where the debug port is on loopback.
    assert debug["host"] == "127.0.0.1"
    assert str(store["path"]).startswith("/var/lib/router/")
    options, _, command = given["HEALTHCHECK"].partition(" CMD ")
    assert "--interval=" in options
    assert f"http://127.0.0.1:{debug['port']}/healthz" in command
    assert json.loads(command)[:2] == ["python", "-c"]


def test_the_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    allowed = {line[1:] for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    assert "*" in DOCKERIGNORE.read_text().splitlines()
    copied = [
        path for word, args in instructions() if word == "COPY" for path in shlex.split(args)[:-1]
    ]
    assert copied
    assert all(path.rstrip("/") in allowed for path in copied), (copied, allowed)


def test_the_image_config_passes_check_config_with_its_store_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/var/lib/router is the image's volume, not a directory here: the same file with its
    store in the test's directory."""
    config = docker_config()
    config["store"] = {"path": str(tmp_path / "store" / "router.db")}
    copy = tmp_path / "router.toml"
    copy.write_text(toml_document(config))
    assert main(["check-config", "--config", str(copy)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"{copy}: ok\n", "")


async def test_the_health_check_command_passes_on_a_healthy_router_and_fails_without_one(
    daemon: Daemon,
) -> None:
    _, _, command = dict(instructions())["HEALTHCHECK"].partition(" CMD ")
    program, flag, code = json.loads(command)
    assert (program, flag) == ("python", "-c")
    port = docker_config()["debug"]["port"]  # type: ignore[index]

    async def run(debug_port: int) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code.replace(f":{port}/", f":{debug_port}/"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            return await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert await run(daemon.router.debug_port) == 0
    assert await run(free_port()) != 0
