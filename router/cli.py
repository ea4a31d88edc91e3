"""`router serve --config PATH`: the daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sqlite3
import sys
from collections.abc import Sequence

import structlog

from router import logs
from router.config.checks import create_store_directory
from router.config.settings import ConfigError, check_references, load_config
from router.daemon import Router, StartError
from router.io.notify import Notifier
from router.io.records import integration_rows
from router.loadtest import command as loadtest
from router.loadtest import setup as loadtest_setup
from router.logs import LogFormat
from router.peers import serve as peers

_log = structlog.get_logger("router.cli")


def configure_logging(log_format: LogFormat, level: str) -> None:
    """Once, before the daemon starts: JSON lines on stderr, or columns when it is a terminal
    (`auto`), and the standard library's lines through the same renderer."""
    logs.configure(log_format, level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router",
        description=(
            "Conversation router: routes customer events from digital channels to flows, bots "
            "and contact-center agents, with durable, retried webhook delivery."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description=(
            "Run the router daemon until SIGINT or SIGTERM; SIGHUP reloads the config file. "
            "Under systemd (Type=notify), readiness, reloads and the stop are reported on "
            "NOTIFY_SOCKET."
        ),
    )
    serve.add_argument(
        "--config",
        required=True,
        metavar="PATH",
        help="the TOML configuration file (see config/router.toml)",
    )
    serve.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="auto",
        help="log output on stderr: json (one object per line), console (for people), or auto "
        "(default: console when stderr is a terminal, json otherwise)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="default: info",
    )
    check = commands.add_parser(
        "check-config",
        help="validate a configuration file and exit",
        description=(
            "Validate a configuration file as `serve` would: every problem is printed on "
            "stderr, one per line with file, key and reason, and the exit code is 2; "
            "exit 0 when the daemon would accept it."
        ),
    )
    check.add_argument("--config", required=True, metavar="PATH")
    peers.add_parser(commands)
    loadtest_setup.add_parser(commands)
    return parser


def check_config(path: str) -> None:
    """What `serve` checks before it listens, including rules naming admin-created bots.

    Every problem of the file is reported at once (`ConfigError.problems`). A missing store
    directory is created, as the store does at start-up; stored bots are then read so that
    a rule may name one created over the admin API.
    """
    config = load_config(path)
    problem = create_store_directory(config.store_path)
    if problem is not None:
        raise ConfigError(problem.line(path))
    bots = {i.id for i in config.integrations}
    if config.store_path.exists():
        uri = f"file:{config.store_path}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                bots |= {row[0] for row in integration_rows(db)}
        except sqlite3.Error as exc:
            raise ConfigError(
                f"{path}: store.path: cannot read {config.store_path}: {exc}"
            ) from exc
    check_references(config, bots)


YOUNG_GENERATION = 50_000


def tune_interpreter() -> None:
    """Settings for a daemon holding many long-lived objects on one busy loop.

    - The store's Python writer thread (every group where the native commit thread is not
      built, and the groups that do not run on the loop) needs the GIL for a moment per
      group; at the default 5 ms switch interval it waits that long behind a busy loop, and
      every message waits with it.
    - Resident conversations live long, so after each full collection the survivors are
      frozen: the next full collection walks only what is newer, instead of every actor at
      every pass. Stopped actors break their own reference cycle, so freezing does not keep
      them alive.
    - Nearly everything a message allocates is freed by its reference count within the turn
      that made it, so the youngest generation is collected after 50,000 net allocations
      instead of 700: at the default, collections took 6-7% of the loop's time under load,
      each walking a few hundred objects that were about to be freed anyway.
    """
    sys.setswitchinterval(0.0005)
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
    gc.freeze()  # what start-up made lives as long as the daemon
    gc.callbacks.append(_freeze_after_full_collection)


def _freeze_after_full_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


async def serve(config_path: str) -> int:
    """Run until SIGINT or SIGTERM; SIGHUP reloads the config file.

    The signal handlers are in place before the daemon starts, so that a SIGHUP sent while
    it starts is a reload once it is up, not the default action (which ends the process).
    A service manager listening on `NOTIFY_SOCKET` hears when the daemon is ready, reloading
    and stopping.
    """
    config = load_config(config_path)
    router = Router(config)
    notifier = Notifier.from_environment()
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    await router.start()
    tune_interpreter()
    notifier.ready(serving_status(router))
    reloads = asyncio.create_task(reload_on_signal(router, config_path, reload, notifier))
    try:
        await stop.wait()
    finally:
        notifier.stopping("stopping: closing the ports, then the actors and the store")
        reloads.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloads
        await router.stop()
    return 0


async def reload_on_signal(
    router: Router, config_path: str, requested: asyncio.Event, notifier: Notifier
) -> None:
    """One reload per SIGHUP; those that arrive during a reload make one more after it."""
    while True:
        await requested.wait()
        requested.clear()
        notifier.reloading(f"reloading {config_path}")
        try:
            applied = await router.reload(config_path)
        except Exception:  # a fault in the reload must not end reloading, nor the daemon
            _log.exception("config_reload_failed", file=config_path)
            applied = False
        status = serving_status(router)
        if not applied:
            status = f"{status}; the last reload was refused, see the log"
        notifier.ready(status)


def serving_status(router: Router) -> str:
    debug = router.config.debug
    return f"serving on {router.public_url}, debug port {debug.host}:{router.debug_port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "peers":
        return peers.main(args)
    if args.command == "loadtest":
        return loadtest.main(args)
    if args.command == "check-config":
        try:
            check_config(args.config)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 2
        print(f"{args.config}: ok")
        return 0
    configure_logging(args.log_format, args.log_level)
    try:
        return asyncio.run(serve(args.config))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
