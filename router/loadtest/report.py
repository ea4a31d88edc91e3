"""The end of a load test: figures, a verdict, a table for people, JSON for machines, a chart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from router.loadtest.driver import Tally
from router.loadtest.verdict import Arrival, Sent, Verdict, judge

LEGS = (
    ("intake", "intake answer (customer -> 202)"),
    ("intake_to_bot", "intake -> bot"),
    ("reply_to_channel", "bot reply -> channel"),
    ("handover_to_ccsp", "handover -> CCSP"),
    ("intake_to_ccsp", "intake -> agent"),
    ("agent_to_channel", "agent message -> channel"),
)


def histogram(values_ms: Iterable[float]) -> HdrHistogram:
    """Microseconds from 1 µs to 10 minutes, three significant digits."""
    found = HdrHistogram(1, 600_000_000, 3)
    for ms in values_ms:
        found.record_value(max(1, int(ms * 1000)))
    return found


@dataclass(frozen=True)
class Leg:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def leg(values_ms: list[float]) -> Leg:
    h = histogram(values_ms)
    return Leg(
        len(values_ms),
        h.get_value_at_percentile(50) / 1000,
        h.get_value_at_percentile(99) / 1000,
        h.get_max_value() / 1000 if values_ms else 0.0,
    )


@dataclass(frozen=True)
class Summary:
    seconds: float  # sending
    sent: int
    verdict: Verdict
    peer_sent: int
    errors: dict[str, int]
    legs: dict[str, Leg]
    drained: bool
    drain_seconds: float
    closes: dict[str, int]

    @property
    def rate(self) -> float:
        """Customer messages accepted per second of sending."""
        customers = self.verdict.accepted - self.peer_sent
        return customers / self.seconds if self.seconds > 0 else 0.0

    @property
    def throughput(self) -> float:
        """Customer messages per second from the first send until the last had arrived: the
        benchmark suite's measure for case (a)."""
        customers = self.verdict.accepted - self.peer_sent
        total = self.seconds + self.drain_seconds
        return customers / total if total > 0 and self.drained else 0.0

    @property
    def ok(self) -> bool:
        return self.verdict.ok and self.drained


def summarize(tally: Tally, peers: dict[str, Any], drained: bool, drain_seconds: float) -> Summary:
    peer_sent = [Sent(*s) for s in peers["sent"]]
    arrivals = (Arrival(*a) for a in peers["arrivals"])
    verdict = judge([*tally.accepted, *peer_sent], arrivals, peers["excused"])
    errors = Counter(tally.errors) + Counter(peers["errors"])
    legs = {"intake": leg([ms for _, ms in tally.intake])}
    for name, values in peers["latencies"].items():
        legs[name] = leg([ms for _, ms in values])
    stopped = tally.stopped if tally.stopped is not None else tally.started
    return Summary(
        seconds=stopped - tally.started,
        sent=tally.sent,
        verdict=verdict,
        peer_sent=len(peer_sent),
        errors=dict(errors),
        legs=legs,
        drained=drained,
        drain_seconds=drain_seconds,
        closes=dict(peers.get("counters", {})),
    )


def as_json(summary: Summary) -> dict[str, Any]:
    v = summary.verdict
    return {
        "ok": summary.ok,
        "seconds": round(summary.seconds, 3),
        "sent": summary.sent,
        "accepted": v.accepted,
        "delivered": v.delivered,
        "lost": v.lost,
        "misordered": v.misordered,
        "duplicates": v.duplicates,
        "excused": v.excused,
        "rate_msg_s": round(summary.rate, 1),
        "throughput_msg_s": round(summary.throughput, 1),
        "drained": summary.drained,
        "drain_seconds": round(summary.drain_seconds, 3),
        "errors": summary.errors,
        "legs": {name: asdict(found) for name, found in summary.legs.items()},
        "closes": summary.closes,
        "lost_examples": list(v.lost_examples),
    }


def render(summary: Summary, console: Console) -> None:
    v = summary.verdict
    figures = Table(title="load test", show_header=False)
    figures.add_row("customer messages accepted/s, while sending", f"{summary.rate:,.0f}")
    figures.add_row("customer messages/s, first sent to last arrived", f"{summary.throughput:,.0f}")
    figures.add_row("sent by customers", f"{summary.sent:,}")
    figures.add_row("accepted (customers and peers)", f"{v.accepted:,}")
    figures.add_row("delivered", f"{v.delivered:,}")
    figures.add_row("lost", f"{v.lost:,}")
    figures.add_row("misordered", f"{v.misordered:,}")
    figures.add_row("duplicates", f"{v.duplicates:,}")
    figures.add_row("refused when processed (reported back)", f"{v.excused:,}")
    drain = "drained" if summary.drained else "NOT drained"
    figures.add_row("after sending stopped", f"{drain} in {summary.drain_seconds:.1f} s")
    console.print(figures)
    legs = Table(title="latency per leg (ms)")
    for column in ("leg", "count", "p50", "p99", "max"):
        legs.add_column(column, justify="left" if column == "leg" else "right")
    for name, title in LEGS:
        found = summary.legs.get(name)
        if found is not None and found.count:
            legs.add_row(
                title,
                f"{found.count:,}",
                f"{found.p50_ms:.2f}",
                f"{found.p99_ms:.2f}",
                f"{found.max_ms:.1f}",
            )
    console.print(legs)
    if summary.errors:
        errors = Table(title="errors")
        errors.add_column("kind")
        errors.add_column("count", justify="right")
        for kind, count in sorted(summary.errors.items(), key=lambda e: -e[1]):
            errors.add_row(kind, f"{count:,}")
        console.print(errors)
    if summary.ok:
        console.print("[bold green]verdict: every accepted message arrived, in order[/]")
    else:
        console.print(
            f"[bold red]verdict: {v.lost} lost, {v.misordered} misordered"
            f"{'' if summary.drained else ', not drained'}[/]"
        )
        if v.lost_examples:
            console.print(f"lost, first few: {', '.join(v.lost_examples)}")


def plot(tally: Tally, peers: dict[str, Any], path: Path) -> None:
    """Accepted and delivered per second, and each leg's p50/p99 per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = tally.started

    def per_second(times: Iterable[float]) -> tuple[list[int], list[int]]:
        counts = Counter(int(t - start) for t in times)
        seconds = list(range(max(counts, default=0) + 1))
        return seconds, [counts.get(s, 0) for s in seconds]

    def percentiles(
        points: list[tuple[float, float]],
    ) -> tuple[list[int], list[float], list[float]]:
        buckets: dict[int, list[float]] = {}
        for t, ms in points:
            buckets.setdefault(int(t - start), []).append(ms)
        seconds = sorted(buckets)
        hs = [histogram(buckets[s]) for s in seconds]
        return (
            seconds,
            [h.get_value_at_percentile(50) / 1000 for h in hs],
            [h.get_value_at_percentile(99) / 1000 for h in hs],
        )

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(*per_second(t for t, _ in tally.intake), label="accepted (customers)")
    arrived = [t for t, _ in peers["latencies"].get("intake_to_bot", [])]
    top.plot(*per_second(arrived), label="arrived at the bot")
    top.set_ylabel("messages / s")
    top.legend()
    top.grid(alpha=0.3)
    series = {"intake": tally.intake, **peers["latencies"]}
    titles = dict(LEGS)
    for name in ("intake", "intake_to_bot", "reply_to_channel"):
        points = [(float(t), float(ms)) for t, ms in series.get(name, [])]
        if points:
            seconds, p50, p99 = percentiles(points)
            top_line = bottom.plot(seconds, p99, label=f"{titles[name]} p99")[0]
            bottom.plot(seconds, p50, linestyle="--", color=top_line.get_color(), label="p50")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds since the start")
    bottom.set_yscale("log")
    bottom.legend(fontsize="small")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
