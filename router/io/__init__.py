"""The I/O edge: the store, the HTTP client, timers and ids; what touches disk, network
or time, and reports back to actors by message."""
