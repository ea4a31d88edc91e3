"""The router a load test starts for itself, and the command's options."""

from __future__ import annotations

import argparse
from pathlib import Path


def router_config(port: int, debug: int, peers: str, store: Path, rule: str) -> str:
    """One bot, one contact center, one flow (told of every handover), one asset."""
    ccsp = 'ccsp = "lt-agents"\n' if rule == "forward_to_bot_ccsp" else ""
    return f"""
[server]
host = "127.0.0.1"
port = {port}
max_connections = 4096  # every client shares one address
max_connections_per_address = 4096
[debug]
host = "127.0.0.1"
port = {debug}
[admin]
token = "lt-admin"
[store]
path = "{store}"
# Every customer and peer is on loopback, as fast as answered: no intake rate limits.
[limits]
asset_rate_per_s = 0
integration_rate_per_s = 0
ccsp_rate_per_s = 0
[[integrations]]
id = "lt-bot"
name = "Load test bot"
url = "{peers}/bot"
access_token = "lt-bot-secret"
webhook_token = "lt-bot-hook"
[[ccsp]]
id = "lt-agents"
url = "{peers}/ccsp"
access_token = "lt-ccsp-secret"
webhook_token = "lt-ccsp-hook"
[[flows]]
id = "lt-flow"
url = "{peers}/flow"
[[assets]]
id = "lt-asset"
channel = "FB"
service = "lt"
outbound_url = "{peers}/channel"
token = "lt-asset-token"
[[services]]
id = "lt"
[[services.rules]]
on = "incoming_message"
action = "{rule}"
bot = "lt-bot"
{ccsp}[[services.rules]]
on = "handover"
action = "invoke_flow"
flow = "lt-flow"
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "loadtest",
        help="drive many concurrent conversations and check that nothing was lost",
        description=(
            "Drive many concurrent conversations through a router and judge whether every "
            "accepted message arrived where it should, in order. By default it starts its own "
            "router and its own bot, contact center, channel and flow on loopback."
        ),
    )
    p.add_argument(
        "--profile",
        choices=("mixed", "intake-to-bot"),
        default="mixed",
        help="mixed (default): customers, bot, agents and channel all talk; "
        "intake-to-bot: the benchmark suite's case (a), customer messages to a bot "
        "that only counts (1,000 users, 64 clients, 5 s)",
    )
    p.add_argument(
        "--conversations",
        type=int,
        metavar="N",
        help="customers, each a conversation (default: 1000)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="customer messages on the wire at once (default: 64)",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="send for this long (default: 10, or 5 for intake-to-bot)",
    )
    p.add_argument("--count", type=int, metavar="N", help="send this many customer messages")
    p.add_argument(
        "--rate",
        type=float,
        metavar="MSG_S",
        help="customer messages per second (default: as fast as the router answers)",
    )
    p.add_argument(
        "--mix",
        metavar="SPEC",
        default="",
        help="e.g. 'reply=0.5,handover=0.03,bot_close=0.01,report=0.3,"
        "agent_reply=0.7,agent_close=0.2,message=0.95,postback=0.05'",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after sending stops, how long everything accepted may take to arrive (default: 30)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    p.add_argument("--plot", metavar="FILE.png", help="write throughput and latency over time")
    p.add_argument("--no-progress", action="store_true", help="no live display while it runs")
    p.add_argument("--seed", type=int, default=1, help="for the peers' and customers' choices")
    p.add_argument(
        "--peers-port",
        type=int,
        metavar="PORT",
        help="where the peers listen (default: a free port)",
    )
    external = p.add_argument_group(
        "a router already running",
        "its asset, bot and CCSP must point at the peers: http://127.0.0.1:PORT/channel, "
        "/bot, /ccsp and /flow, with --peers-port PORT",
    )
    external.add_argument("--router", metavar="URL", help="its public base URL")
    external.add_argument("--asset", default="lt-asset")
    external.add_argument("--asset-token", default="lt-asset-token")
    external.add_argument("--bot-webhook", metavar="URL", help="the bot's webhook URL")
    external.add_argument("--ccsp-webhook", metavar="URL", help="the CCSP's webhook URL")
