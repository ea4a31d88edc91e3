"""The router's actors: each owns its state and talks to the I/O edge by message."""
