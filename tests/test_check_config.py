"""`router check-config`: every problem of a file at once, each with file, key and reason.

Real files in a temporary directory, checked by the real command line (`router.cli.main`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.cli import main
from router.io.store import connect, migrate

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "router.toml"

BASE = """\
[admin]
token = "t"

[store]
path = "var/router.db"

[[integrations]]
id = "support-bot"
name = "Support bot"
url = "http://127.0.0.1:9001/send"
access_token = "bot-secret"

[[ccsp]]
id = "agents"
url = "http://127.0.0.1:9002/ccsp"
access_token = "ccsp-secret"

[[flows]]
id = "crm"
url = "http://127.0.0.1:9003/flow"
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative store paths resolve from the working directory, as for the daemon."""
    monkeypatch.chdir(tmp_path)


def check(text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """Exit code, the problems printed on stderr, and stdout."""
    Path("router.toml").write_text(text)
    code = main(["check-config", "--config", "router.toml"])
    out, err = capsys.readouterr()
    return code, err.splitlines(), out


def problems(text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, lines, out = check(text, capsys)
    assert code == 2
    assert out == ""
    return lines


def rules(*lines: str) -> str:
    return BASE + '\n[[services]]\nid = "support"\n\n[[services.rules]]\n' + "\n".join(lines)


def test_the_shipped_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(SHIPPED, tmp_path / "router.toml")
    code = main(["check-config", "--config", "router.toml"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == "router.toml: ok\n"


def test_a_misspelled_key_is_unknown_with_a_suggestion_not_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = BASE.replace('token = "t"', 'tokn = "t"') + "[delivery]\nretry_delay_s = [1]\n"
    assert problems(text, capsys) == [
        "router.toml: admin.tokn: unknown key `tokn`; did you mean `token`?",
        "router.toml: delivery.retry_delay_s: unknown key `retry_delay_s`; "
        "did you mean `retry_delays_s`?",
    ]


def test_a_missing_required_key(capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace('url = "http://127.0.0.1:9003/flow"\n', "").replace('token = "t"\n', "")
    assert problems(text, capsys) == [
        "router.toml: admin.token: is required",
        "router.toml: flows[0].url: is required",
    ]


def test_a_wrong_type(capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE + '[server]\nport = "8080"\nhost = 127\n'
    assert problems(text, capsys) == [
        "router.toml: server.host: must be a string",
        "router.toml: server.port: must be an integer",
    ]


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("timeout_s = 120", "delivery.timeout_s: must be at most 60, got 120"),
        ("timeout_s = 0", "delivery.timeout_s: must be greater than 0, got 0"),
        ("retry_delays_s = []", "delivery.retry_delays_s: must not be empty"),
        ("retry_delays_s = [60, -1]", "delivery.retry_delays_s[1]: must be at least 0, got -1"),
        (
            "inactive_after_failures = 0",
            "delivery.inactive_after_failures: must be at least 1, got 0",
        ),
    ],
)
def test_delivery_ranges(setting: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert problems(BASE + f"[delivery]\n{setting}\n", capsys) == [f"router.toml: {problem}"]


def test_a_count_of_zero(capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE + "[conversations]\nmax_live = 0\n"
    assert problems(text, capsys) == [
        "router.toml: conversations.max_live: must be at least 1, got 0"
    ]


@pytest.mark.parametrize(
    ("server", "debug"),
    [
        ("port = 8080", "port = 8080"),
        ('host = "0.0.0.0"\nport = 9000', 'host = "127.0.0.1"\nport = 9000'),
    ],
)
def test_the_debug_port_must_not_be_the_public_port(
    server: str, debug: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [line] = problems(BASE + f"[server]\n{server}\n[debug]\n{debug}\n", capsys)
    assert line.startswith("router.toml: debug.port: clashes with server.port: both listen on ")


@pytest.mark.parametrize(
    ("server", "debug"),
    [
        ('host = "127.0.0.1"\nport = 9000', 'host = "127.0.0.2"\nport = 9000'),
        ("port = 0", "port = 0"),  # each asks the system for a free port
    ],
)
def test_the_same_port_on_other_hosts_does_not_clash(
    server: str, debug: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = check(BASE + f"[server]\n{server}\n[debug]\n{debug}\n", capsys)
    assert (code, lines) == (0, [])


def test_references_to_unknown_bots_ccsps_and_flows(capsys: pytest.CaptureFixture[str]) -> None:
    text = rules(
        'on = "incoming_message"',
        'action = "forward_to_bot_ccsp"',
        'bot = "ghost"',
        'ccsp = "agent"',
        "",
        "[[services.rules]]",
        'on = "notify"',
        'action = "invoke_flow"',
        'flow = "nowhere"',
    )
    assert problems(text, capsys) == [
        "router.toml: services[0].rules[0].ccsp: unknown ccsp 'agent'; did you mean 'agents'?",
        "router.toml: services[0].rules[1].flow: unknown flow 'nowhere'",
    ]
    fixed = text.replace('"agent"', '"agents"').replace('"nowhere"', '"crm"')
    assert problems(fixed, capsys) == [
        "router.toml: services[0].rules[0].bot: unknown integration 'ghost'"
    ]


def test_a_bot_created_over_the_admin_api_may_be_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "var").mkdir()
    with contextlib.closing(connect(tmp_path / "var" / "router.db")) as db:
        migrate(db)
        db.execute(
            "INSERT INTO integrations (id, name, url, access_token, webhook_token, origin, "
            "created_at) VALUES ('admin-bot', 'A', 'http://127.0.0.1:9/x', 'a', 'w', 'api', ?)",
            (time.time(),),
        )
    text = rules('on = "incoming_message"', 'action = "forward_to_bot"', 'bot = "admin-bot"')
    code, lines, out = check(text, capsys)
    assert (code, lines, out) == (0, [], "router.toml: ok\n")


def test_a_store_directory_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "blocker").write_text("a regular file")
    text = BASE.replace('"var/router.db"', '"blocker/sub/router.db"')
    assert problems(text, capsys) == [
        "router.toml: store.path: cannot create directory blocker/sub: blocker is not a directory"
    ]


def test_a_store_path_that_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    text = BASE.replace('"var/router.db"', '"data"')
    assert problems(text, capsys) == ["router.toml: store.path: data is a directory, not a file"]


def test_a_missing_store_directory_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE.replace('"var/router.db"', '"var/nested/router.db"')
    code, lines, _ = check(text, capsys)
    assert (code, lines) == (0, [])
    assert (tmp_path / "var" / "nested").is_dir()
    assert not (tmp_path / "var" / "nested" / "router.db").exists()


def test_a_refused_file_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems(BASE + "[delivery]\ntimeout_s = 0\n", capsys)
    assert not (tmp_path / "var").exists()


SEVERAL = (
    BASE.replace('path = "var/router.db"', 'path = "blocker/router.db"')
    + """
[server]
prot = 8080

[debug]
port = 8080

[delivery]
timeout_s = 120
retry_delays_s = []

[conversations]
max_live = 0

[[services]]
id = "support"

[[services.rules]]
on = "incoming_message"
action = "invoke_flow"
flow = "crn"
"""
)
SEVERAL_PROBLEMS = [
    "router.toml: server.prot: unknown key `prot`; did you mean `port`?",
    "router.toml: delivery.timeout_s: must be at most 60, got 120",
    "router.toml: delivery.retry_delays_s: must not be empty",
    "router.toml: conversations.max_live: must be at least 1, got 0",
    "router.toml: debug.port: clashes with server.port: both listen on port 8080 (127.0.0.1)",
    "router.toml: services[0].rules[0].flow: unknown flow 'crn'; did you mean 'crm'?",
    "router.toml: store.path: blocker is not a directory",
]


def test_several_problems_are_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "blocker").write_text("a regular file")
    assert problems(SEVERAL, capsys) == SEVERAL_PROBLEMS


def test_serve_refuses_to_start_with_the_same_problems(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a regular file")
    (tmp_path / "router.toml").write_text(SEVERAL)
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--config", "router.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    for line in SEVERAL_PROBLEMS:
        assert line in result.stderr


def test_a_file_that_is_not_utf8_is_reported_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[admin]\ntoken = "caf\xe9"\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_a_duration_past_ten_years_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "long.toml"
    config.write_text(
        f'[admin]\ntoken = "a"\n[store]\npath = "{tmp_path / "r.db"}"\n'
        "[delivery]\nhandover_deadline_s = 1e300\n"
    )
    assert main(["check-config", "--config", str(config)]) == 2
    assert "delivery.handover_deadline_s" in capsys.readouterr().err
