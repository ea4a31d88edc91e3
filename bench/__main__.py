"""The whole benchmark suite, one command: `python -m bench`.

Each part compares the router with a baseline in the same run on this machine, so its figure
is a ratio before it is a number; `bench/README.md` says what each measures and the latest
figures. Parts run one after another, never side by side: they share the machine's cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.throughput import CHECKOUT  # each part runs this checkout's code

PARTS = (
    ("(g) actor runtime: tells per second, memory per actor", ["bench.tells"]),
    ("(a) intake to bot: router beside a bare relay", ["bench.throughput"]),
    ("(b) (c) (d) round trip, latency, new conversations, /healthz", ["bench.http_cases"]),
    ("(e) (f) (h) memory per conversation, activation, SIGTERM", ["bench.scale"]),
)


def read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "-"


def host() -> str:
    """What the latency figures rest on besides the code: how busy this machine is, and
    whether an idle vCPU halts at once (a thread woken on it then waits for the hypervisor to
    run the vCPU again; each group commit takes two wake-ups, the commit thread's and then the
    loop's), whether the store's native commit thread was built (without it, a Python thread
    commits), and whether its WAL VFS can be used (without it, SQLite writes the WAL page by
    page).
    `guest_halt_poll_ns` applies only where driver and governor are `haltpoll`."""
    from router.io import wal_vfs
    from router.io.commit_thread import Committer

    cpuidle = "/sys/devices/system/cpu/cpuidle"
    return (
        f"host: {os.cpu_count() or '?'} cpus, load average {read('/proc/loadavg').split(' ')[0]},"
        f" cpuidle driver {read(f'{cpuidle}/current_driver')}"
        f" governor {read(f'{cpuidle}/current_governor_ro')},"
        f" guest_halt_poll_ns {read('/sys/module/haltpoll/parameters/guest_halt_poll_ns')};"
        f" native commit thread {'not built' if Committer is None else 'built'},"
        f" WAL VFS {'in use' if wal_vfs.usable() else 'not in use'}"
    )


def main() -> int:
    print(host(), flush=True)
    failed = 0
    for title, module in PARTS:
        print(f"\n== {title}: python -m {' '.join(module)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", *module], cwd=CHECKOUT)
        print(f"-- {time.perf_counter() - started:.0f} s, exit {code}", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
