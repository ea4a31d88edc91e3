"""`router loadtest --profile intake-to-bot` beside the benchmark suite's case (a), alternating
in one sitting: the load test's figure should land within ±15% of the benchmark's.

    python -m bench.loadtest_check [--runs 5]

Each case (a) run is `bench.throughput`'s router run; each load-test run is the command as a
user types it, with `--json`, taking `throughput_msg_s` (first sent to last arrived, case
(a)'s measure).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys

import orjson

from bench.throughput import CHECKOUT, one_run


def loadtest() -> tuple[float, bool]:
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "loadtest", "--profile", "intake-to-bot", "--json"],
        capture_output=True,
        check=False,
        cwd=CHECKOUT,
    ).stdout
    found = orjson.loads(out)
    return float(found["throughput_msg_s"]), bool(found["ok"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    case_a = argparse.Namespace(seconds=5.0, concurrency=64, users=1000)
    bench: list[float] = []
    tested: list[float] = []
    for run in range(args.runs):
        bench.append(asyncio.run(one_run("router", case_a)))
        rate, ok = loadtest()
        tested.append(rate)
        print(
            f"run {run + 1}: case (a) {bench[-1]:,.0f} msg/s, loadtest {rate:,.0f} msg/s"
            f" (verdict {'ok' if ok else 'NOT ok'})",
            flush=True,
        )
    a, b = statistics.median(bench), statistics.median(tested)
    print(
        f"medians: case (a) {a:,.0f}, loadtest {b:,.0f}; ratio {b / a:.3f}"
        f" ({'within' if abs(b / a - 1) <= 0.15 else 'OUTSIDE'} ±15%)"
    )


if __name__ == "__main__":
    main()
