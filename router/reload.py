"""Reloading the config file while the daemon runs (`SIGHUP`), or keeping the running one.

A reload is decided whole before anything changes, in this order:

1. the file is read and checked as `serve` and `check-config` check it, every problem at once;
2. a key the running parts were built with (listeners, store, delivery schedule, the
   directory's limits) must be unchanged: those need a restart;
3. every bot a rule names is in the new file or was created over the admin API;
4. in one store transaction, behind every write already queued: nothing the file removes
   (a bot, CCSP, flow or asset) is still owed a delivery, nor a CCSP an open agent session;
   only then are bots written as at start-up, removed ones deleted, CCSP webhook tokens kept.

A file refused at 2 or 3 has its removals checked too (a read), so that one refusal names
every reason the operator has to deal with.

Then, with no `await` in between, the new config replaces the old where every request and
route reads it (one assignment each, on the loop) and endpoint actors are started,
reconfigured or stopped. Nothing accepted is touched: conversations keep their deliveries,
lanes and timers, and whatever is owed to a destination that stays keeps going to it, at
its new URL if that changed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from actors.messages import Reconfigure
from router.config.changes import ConfigChanges, config_changes, restart_keys
from router.config.settings import Config, ConfigError, check_references, load_config
from router.domain.endpoint_state import destination_states
from router.io.ids import new_token
from router.io.reload_writes import (
    ReloadWrites,
    ReloadWritten,
    Removal,
    removal_blockers,
    write_reload,
)

if TYPE_CHECKING:
    from router.daemon import Router

__all__ = ["reload_config"]

_log = structlog.get_logger("router.reload")

# Destinations besides bots: the kind deliveries name them by, their table in the file,
# and the keys of that table an endpoint actor holds.
DESTINATIONS = (
    ("ccsp", "ccsp", {"url", "access_token", "signing_secret"}),
    ("flow", "flows", {"url", "signing_secret"}),
    ("channel", "assets", {"outbound_url", "token", "signing_secret"}),
)


async def reload_config(router: Router, path: str | Path) -> bool:
    """Apply the file at `path`, or log every reason it is refused and keep what runs."""
    async with router.reloading:
        source = str(path)
        try:
            new = load_config(path)
        except ConfigError as exc:
            return _refused(source, list(exc.problems))
        reasons = [
            f"{source}: {key}: changed; needs a restart" for key in restart_keys(router.config, new)
        ]
        admin_bots = {i.id for i in router.integrations.items.values() if i.origin == "admin"}
        try:
            check_references(new, {i.id for i in new.integrations} | admin_bots)
        except ConfigError as exc:
            reasons += exc.problems
        if router.intake is None or router.stopped:
            return _refused(source, [*reasons, f"{source}: the router is not running"])
        changes = config_changes(router.config, new)
        writes = ReloadWrites(new.integrations, new.ccsps, _removals(changes))
        if reasons:
            blockers = await router.store.read(partial(removal_blockers, removals=writes.removals))
            return _refused(source, [*reasons, *(f"{source}: {b}" for b in blockers)])
        try:
            written = await router.store.write(
                partial(write_reload, writes=writes, new_token=new_token, now=router.clock.now())
            )
        except Exception as exc:
            return _refused(source, [f"{source}: store: cannot write the reload: {exc}"])
        if written.blockers:
            return _refused(source, [f"{source}: {reason}" for reason in written.blockers])
        before = router.rotation.slots()
        _apply(router, new, changes, written)
        _log.info("config_reloaded", file=source, changes=changes.summary())
        await router.rotation.changed(before)  # replaced secrets stay good for the overlap
        return True


def _refused(source: str, reasons: list[str]) -> bool:
    _log.error("config_reload_refused", file=source, reasons=reasons)
    return False


def _removals(changes: ConfigChanges) -> tuple[Removal, ...]:
    found = [Removal("bot", "integrations", i) for i in changes.table("integrations").removed]
    for kind, table, _ in DESTINATIONS:
        found += [Removal(kind, table, item_id) for item_id in changes.table(table).removed]
    return tuple(found)


def _apply(router: Router, new: Config, changes: ConfigChanges, written: ReloadWritten) -> None:
    """Synchronous, on the loop: no request and no actor turn sees half of it."""
    assert router.intake is not None
    router.config = new
    router.intake.config = new
    _apply_bots(router, changes, written)
    removed_ccsps = changes.table("ccsp").removed
    router.ccsp_tokens.update(written.ccsp_tokens)
    for ccsp_id in removed_ccsps:
        router.ccsp_tokens.pop(ccsp_id, None)
    router.session_idle_timeouts.clear()
    router.session_idle_timeouts.update({c.id: c.session_idle_timeout_s for c in new.ccsps})
    states = {state.dest.key: state for state in destination_states(new)}
    for kind, table, held in DESTINATIONS:
        table_changes = changes.table(table)
        for item_id in table_changes.added:
            router.start_endpoint(states[f"{kind}:{item_id}"])
        for item_id, keys in table_changes.changed.items():
            state = states[f"{kind}:{item_id}"]
            endpoint = router.endpoints.get(state.dest.key)
            if endpoint is not None and held.intersection(keys):
                endpoint.tell(Reconfigure(state.url, state.access_token, state.signing_secret))
        for item_id in table_changes.removed:
            router.remove_endpoint(item_id, kind)


def _apply_bots(router: Router, changes: ConfigChanges, written: ReloadWritten) -> None:
    """Bots as stored: a new one gets its endpoint (with the state and failure count the
    store kept, should it have been created over the admin API before), a changed URL or
    token reaches its endpoint, a removed one stops."""
    removed = changes.table("integrations").removed
    before = dict(router.integrations.items)
    router.integrations.adopt(tuple(i for i, _, _ in written.integrations), removed)
    for integration, state, failures in written.integrations:
        previous = before.get(integration.id)
        if f"bot:{integration.id}" not in router.endpoints:
            router.add_endpoint(integration, state, failures)
        elif previous is None or (
            previous.url,
            previous.access_token,
            previous.signing_secret,
        ) != (integration.url, integration.access_token, integration.signing_secret):
            router.reconfigure_endpoint(integration)
    for item_id in removed:
        router.remove_endpoint(item_id)
