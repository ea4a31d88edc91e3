"""Problems with a configuration file, in the words of the operator who has to fix them.

A refusal lists every problem at once, one per line, each naming the file, the key path
(`delivery.timeout_s`, `integrations[1].url`) and the reason: fixing a file one error per
start is slow, and pydantic's own messages speak of "inputs" and "dictionaries", which
are not what the operator sees in a TOML file.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["ConfigError", "Problem", "from_validation_error", "key_path"]

Loc = tuple[int | str, ...]


class ConfigError(Exception):
    """A configuration the daemon refuses to start with: every problem, one per line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong, at one key; `where` is the key path without the file."""

    where: str
    reason: str

    def line(self, source: str) -> str:
        return f"{source}: {self.where}: {self.reason}"


def key_path(loc: Loc) -> str:
    """('integrations', 1, 'url') -> 'integrations[1].url', the way the file is read."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<top level>"


def _shown(value: object) -> str:
    """A value as it would be written in TOML, for "got ..." in a reason."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return repr(value)
    return str(value)


def from_validation_error(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Every error pydantic found, as problems; a misspelled required key is reported once,
    as unknown with its suggestion, not a second time as missing."""
    details = [(tuple(d["loc"]), d) for d in error.errors(include_url=False)]
    guesses = {loc: _closest(loc, root) for loc, d in details if d["type"] == "extra_forbidden"}
    suggested = {(*loc[:-1], guess) for loc, guess in guesses.items() if guess is not None}
    problems = []
    for loc, detail in details:
        if loc in guesses:
            guess = guesses[loc]
            hint = f"; did you mean `{guess}`?" if guess is not None else ""
            problems.append(Problem(key_path(loc), f"unknown key `{loc[-1]}`{hint}"))
        elif not (detail["type"] == "missing" and loc in suggested):
            problems.append(_problem(detail, loc, root))
    return problems


def _problem(detail: ErrorDetails, loc: Loc, root: type[BaseModel]) -> Problem:
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    if "config_key" in ctx:  # a table-level check that names the key it is about
        loc = (*loc, ctx["config_key"])
    return Problem(key_path(loc), _reason(detail["type"], detail, ctx, loc, root))


def _reason(
    kind: str, detail: ErrorDetails, ctx: dict[str, Any], loc: Loc, root: type[BaseModel]
) -> str:
    got = _shown(detail["input"])
    if kind == "missing":
        return "is required"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "string_type":
        return "must be a string"
    if kind == "bool_type":
        return "must be true or false"
    if kind == "greater_than":
        return f"must be greater than {_shown(ctx['gt'])}, got {got}"
    if kind == "greater_than_equal":
        return f"must be at least {_shown(ctx['ge'])}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {_shown(ctx['le'])}, got {got}"
    if kind == "too_short":
        return "must not be empty"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a table"
    if kind == "list_type":
        if _is_table_list(loc, root):
            header = ".".join(str(part) for part in loc if isinstance(part, str))
            return f"must be an array of tables ([[{header}]])"
        return "must be an array"
    return detail["msg"]  # our own validators' reasons are already in plain words


def _closest(loc: Loc, root: type[BaseModel]) -> str | None:
    model = _model_at(loc[:-1], root)
    if model is None:
        return None
    names = list(model.model_fields)
    found = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return found[0] if found else None


def _model_at(loc: Sequence[int | str], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model that describes the table at `loc`, walking fields and array items."""
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
        else:
            return None
    return _as_model(current)


def _is_table_list(loc: Loc, root: type[BaseModel]) -> bool:
    parent = _model_at(loc[:-1], root)
    field = parent.model_fields.get(str(loc[-1])) if parent is not None and loc else None
    args = get_args(field.annotation) if field is not None else ()
    return bool(args) and _as_model(args[0]) is not None


def _as_model(value: Any) -> type[BaseModel] | None:
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value
    # `Model | None` for an optional table
    return next(
        (a for a in get_args(value) if isinstance(a, type) and issubclass(a, BaseModel)), None
    )
