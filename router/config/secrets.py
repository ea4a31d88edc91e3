"""What makes a signing secret usable, for the file and the admin API alike."""

from __future__ import annotations

import base64
import binascii

PREFIX = "whsec_"


def signing_secret_problem(value: str) -> str | None:
    """Why `value` cannot sign deliveries, as the end of a sentence; None if it can.

    Standard Webhooks secrets are `whsec_` and the key in base64; a key shorter than 24
    bytes (192 bits) is refused, as the specification asks for at least that much."""
    if not value.startswith(PREFIX):
        return f"must start with {PREFIX!r} (a Standard Webhooks secret)"
    try:
        key = base64.b64decode(value[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"must be {PREFIX!r} followed by base64"
    if len(key) < 24:
        return f"must hold a key of at least 24 bytes, got {len(key)}"
    return None
