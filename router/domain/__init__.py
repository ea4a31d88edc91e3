"""The pure domain: conversations, lanes, sessions, rules and payloads.

Events in, state and decisions out. No I/O, no clock, no threads; imports nothing of the
router but its configuration.
"""
