"""Tells per second and memory per idle actor: `LoopActor` beside pykka's `ThreadingActor`.

    python -m bench.tells [--loop-actors 100000] [--thread-actors 10000] [--tells 1000000]

Both runtimes get the same work in the same run: every actor is started, then told messages
round-robin until `--tells` have been handled, and the clock stops when the last is counted.
ThreadingActor runs far fewer actors: at one OS thread each, `vm.max_map_count` caps a
process at about 32,000 of them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import threading
import time
import tracemalloc
from typing import Any

import pykka

from actors.runtime import LoopActor


class Counter:
    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = threading.Event()
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.target:
                self.done.set()


class LoopCounting(LoopActor):
    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def on_receive(self, message: Any) -> None:
        self.counter.count += 1  # one thread: the loop's
        if self.counter.count == self.counter.target:
            self.counter.done.set()


class ThreadCounting(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def on_receive(self, message: Any) -> None:
        self.counter.hit()


async def loop_run(actors: int, tells: int) -> tuple[float, float, int]:
    counter = Counter(tells)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    refs = [LoopCounting.start(counter) for _ in range(actors)]
    await asyncio.sleep(0)  # first turns: on_start
    per_actor = (tracemalloc.get_traced_memory()[0] - before) / actors
    tracemalloc.stop()
    threads = threading.active_count()
    start = time.perf_counter()
    for n in range(tells):
        refs[n % actors].tell(n)
        if n % 50_000 == 0:
            await asyncio.sleep(0)
    while not counter.done.is_set():
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    return tells / elapsed, per_actor, threads


def thread_run(actors: int, tells: int) -> tuple[float, int]:
    counter = Counter(tells)
    refs = [ThreadCounting.start(counter) for _ in range(actors)]
    threads = threading.active_count()
    start = time.perf_counter()
    for n in range(tells):
        refs[n % actors].tell(n)
    counter.done.wait()
    elapsed = time.perf_counter() - start
    pykka.ActorRegistry.stop_all(block=True)
    return tells / elapsed, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop-actors", type=int, default=100_000)
    parser.add_argument("--thread-actors", type=int, default=10_000)
    parser.add_argument("--tells", type=int, default=1_000_000)
    args = parser.parse_args()
    loop_rate, per_actor, loop_threads = asyncio.run(loop_run(args.loop_actors, args.tells))
    thread_tells = min(args.tells, 200_000)  # ThreadingActor is slow enough to need fewer
    thread_rate, thread_threads = thread_run(args.thread_actors, thread_tells)
    print(
        f"LoopActor       {args.loop_actors:>9,} actors  {loop_rate:>12,.0f} tells/s  "
        f"{per_actor:>7,.0f} B per idle actor with its ref  threads: {loop_threads}"
    )
    print(
        f"ThreadingActor  {args.thread_actors:>9,} actors  {thread_rate:>12,.0f} tells/s  "
        f"threads: {thread_threads}"
    )
    print(f"ratio           {loop_rate / thread_rate:>.1f}x")


if __name__ == "__main__":
    main()
