"""`router loadtest`: many concurrent conversations against a router, and a verdict.

The customer side (the driver) runs in this process; the bot, contact center, channel and
flow run in a second process that reacts as real ones would (replies, handovers, agent
messages, delivery reports, closes) and records what arrived. Every message carries its own
id, stream and sequence number, so the verdict (lost, misordered, duplicated) needs nothing
from the router but what it delivered.
"""
