"""File descriptors: the public port may hold at most half of them.

Every connection a client opens costs the daemon a descriptor, and so does every delivery
it makes, its store and its debug port. When clients could take them all, deliveries fail
with EMFILE and a bot is taken out of service by the daemon's own exhaustion, not by any
fault of the bot. So the soft open-file limit is raised to the hard one at start, and the
public port's connection cap is kept at or below half of it: the other half stays for the
daemon's own work, whatever clients do.
"""

from __future__ import annotations

import resource

__all__ = ["connection_cap", "raise_open_file_limit"]


def raise_open_file_limit() -> int:
    """Raise the soft `RLIMIT_NOFILE` to the hard limit where allowed; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return _finite(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return _finite(soft)  # a container may refuse; the cap below then uses what there is
    return _finite(wanted)


def connection_cap(configured: int, open_files: int) -> int:
    """The public port's cap: as configured, but never more than half the open files."""
    return max(1, min(configured, open_files // 2))


def _finite(limit: int) -> int:
    return (1 << 20) if limit == resource.RLIM_INFINITY else limit
