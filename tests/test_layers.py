"""The house in layers: each layer imports only those beneath it, and the domain does no I/O.

config  <  domain  <  io  <  http, actors  <  daemon (router.daemon, router.cli)
config  <  peers (talks to a router over HTTP only)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A layer and what it may import of the router besides itself.
BENEATH = {
    "router.config": set(),
    "router.domain": {"router.config"},
    "router.io": {"router.config", "router.domain"},
    "router.http": {"router.config", "router.domain", "router.io"},
    "actors": {"router.config", "router.domain", "router.io"},
    # Tools that talk to a router only over HTTP, as any bot or channel would.
    "router.peers": {"router.config"},
    "router.loadtest": set(),
}
# What the domain may not touch: it is handed `now` and ids, and returns decisions.
NO_IO = {
    "asyncio",
    "aiohttp",
    "sqlite3",
    "threading",
    "time",
    "socket",
    "secrets",
    "uuid",
    "random",
}


def layer_of(module: str) -> str | None:
    return next(
        (layer for layer in BENEATH if module == layer or module.startswith(layer + ".")), None
    )


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted([*ROOT.glob("router/**/*.py"), *ROOT.glob("actors/**/*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def runtime_imports(path: Path) -> set[str]:
    """Imported module names, leaving out those only type checkers see."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_a_layer_imports_only_what_lies_beneath_it(module: str, path: Path) -> None:
    layer = layer_of(module)
    if layer is None:
        return  # the wiring room (router.daemon, router.cli) knows every layer
    allowed = BENEATH[layer] | {layer}
    wrong = sorted(
        name
        for name in runtime_imports(path)
        if (other := layer_of(name) or ("router.daemon" if name.startswith("router.") else None))
        and other not in allowed
        and name not in {"router"}
    )
    assert wrong == [], f"{module} ({layer}) imports {wrong}"


@pytest.mark.parametrize(
    ("module", "path"),
    [(m, p) for m, p in modules() if layer_of(m) in {"router.domain", "router.config"}],
)
def test_the_domain_does_no_io(module: str, path: Path) -> None:
    touched = {name.split(".")[0] for name in runtime_imports(path)} & NO_IO
    assert touched == set(), f"{module} imports {sorted(touched)}"
