"""Logging, configured once when the daemon starts: structlog for the router's own lines,
the standard library's (pykka, aiohttp) rendered by the same processors, all on one stream.

JSON lines for machines when the stream is not a terminal, readable columns on one. Lines
below the level are dropped by the bound logger's method itself, before any processor or
formatting runs, so a debug line on a busy path costs a call that returns at once.

No context variables: they follow asyncio tasks, and the actors of every conversation share
the loop's, so a conversation's fields are passed at each call instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.types import Processor

LogFormat = Literal["auto", "json", "console"]
FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")


def json_lines(log_format: LogFormat, stream: TextIO) -> bool:
    """`auto` is JSON unless a person is watching the stream."""
    if log_format == "auto":
        return not _is_terminal(stream)
    return log_format == "json"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


def configure(
    log_format: LogFormat, level: str, stream: TextIO | None = None, *, cache: bool = True
) -> None:
    """Set up both structlog and the standard library's root logger to write to `stream`
    (stderr by default). `cache` keeps each logger's configuration after its first use, as a
    daemon should; a test that configures and then restores leaves it off."""
    out = stream if stream is not None else sys.stderr
    as_json = json_lines(log_format, out)
    stamped: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        # Tracebacks as text in an "exception" field; the console renders its own.
        stamped.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[
            *stamped,
            structlog.processors.JSONRenderer(serializer=orjson.dumps)
            if as_json
            else structlog.dev.ConsoleRenderer(colors=_is_terminal(out)),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=(
            structlog.BytesLoggerFactory(out.buffer)
            if as_json
            else structlog.PrintLoggerFactory(out)
        ),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(serializer=_json_text)
                if as_json
                else structlog.dev.ConsoleRenderer(colors=_is_terminal(out)),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # pykka reports crashed actors, aiohttp its own faults: warnings and worse.
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def _json_text(value: Any, **options: Any) -> str:
    """orjson for the standard library's lines too, which want text."""
    return orjson.dumps(value, **options).decode()
