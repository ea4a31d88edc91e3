"""The API as documented: `GET /openapi.json`, and the live daemon fuzzed against it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.http.openapi import document
from router.loadtest.command import free_port
from tests.conftest import Daemon
from tests.processes import serving

TOKEN = "fuzz-token"  # the asset's and the admin's, so one header opens both


async def test_the_document_is_served_and_names_every_route(daemon: Daemon) -> None:
    async with daemon.session.get(daemon.public + "/openapi.json") as answer:
        assert answer.status == 200
        served = await answer.json()
    assert served == document() and served["openapi"] == "3.1.0"
    routes = {
        (method.upper(), route.resource.canonical)  # type: ignore[union-attr]
        for route in daemon.router.public_runner.app.router.routes()  # type: ignore[union-attr]
        for method in [route.method]
        if method != "HEAD"
    }
    documented = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert routes == documented


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daemon of its own: the fuzzer's requests are synchronous, so not on the test's loop."""
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    nowhere = "http://127.0.0.1:9/nothing"  # deliveries fail and retry: not what is tested
    config = tmp / "router.toml"
    config.write_text(
        f"""
[server]
port = {port}
[debug]
port = {free_port()}
[admin]
token = "{TOKEN}"
[store]
path = "{tmp / "r.db"}"
[[integrations]]
id = "fuzz-bot"
name = "Fuzz bot"
url = "{nowhere}"
access_token = "b"
webhook_token = "fuzz-hook"
[[ccsp]]
id = "fuzz-ccsp"
url = "{nowhere}"
access_token = "c"
webhook_token = "fuzz-ccsp-hook"
[[assets]]
id = "fuzz-asset"
channel = "FB"
service = "s"
outbound_url = "{nowhere}"
token = "{TOKEN}"
[[services]]
id = "s"
[[services.rules]]
on = "incoming_message"
action = "forward_to_bot_ccsp"
bot = "fuzz-bot"
ccsp = "fuzz-ccsp"
"""
    )
    with serving(config, port) as url:
        yield url


@pytest.fixture(scope="module")
def api(fuzzed: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed}/openapi.json")


KNOWN = {"asset_id": "fuzz-asset", "integration_id": "fuzz-bot", "ccsp_id": "fuzz-ccsp"}
OPERATIONS = [(path, method) for path, ops in document()["paths"].items() for method in ops]


def past_the_door(case: Any) -> None:
    """Half the cases reach past the door with known ids and tokens, half knock with their own,
    so that the parsers behind it are fuzzed too."""
    params = case.path_parameters or {}
    if not params or hash(repr(params)) % 2:
        return
    for name, value in KNOWN.items():
        if name in params:
            params[name] = value
    if "webhook_token" in params:
        params["webhook_token"] = "fuzz-hook" if "integration_id" in params else "fuzz-ccsp-hook"


@pytest.mark.slow
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_answer_is_a_server_error_or_off_the_document(api: Any, path: str, method: str) -> None:
    operation = api[path][method.upper()]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        past_the_door(case)
        case.call_and_validate(
            headers={"Authorization": f"Bearer {TOKEN}"},
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

    check()
