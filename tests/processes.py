"""A router daemon as its own process, for tests whose clients block (or are themselves
processes) and so cannot share the test's loop with an in-process router."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def serving(config: Path, port: int) -> Iterator[str]:
    """`router serve` on `config` until the block ends; yields its public base URL once the
    port answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "router did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
