"""A commit made to fail where none can be made to fail here (an fsync's I/O error): the file
check before the COMMIT raises instead. The native commit thread does that check in C, so
the groups go to the Python writer thread while the fault is in place; a real COMMIT that
fails on the native thread is tested apart (`test_store_groups`)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from router.io.store import Store


def fail_before_commit(
    monkeypatch: pytest.MonkeyPatch, store: Store, check: Callable[[], None]
) -> None:
    monkeypatch.setattr(store, "_native", None)
    monkeypatch.setattr(store, "_check_file", check)
