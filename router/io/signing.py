"""Standard Webhooks headers for every outbound call: an id that stays the same across
retries and replays, the time of this attempt, and, with the destination's secret, an
HMAC-SHA256 signature of "id.timestamp.body" (the `standardwebhooks` reference library).

While a secret is being replaced there are several: one signature each, space-separated in
the one header, as the specification provides, so a receiver holding either verifies."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks.webhooks import Webhook


@lru_cache(maxsize=256)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)  # decodes the key once per secret


def webhook_headers(
    webhook_id: str, timestamp: float, body: bytes, *secrets: str | None
) -> dict[str, str]:
    seconds = int(timestamp)
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(seconds)}
    if keys := [secret for secret in secrets if secret]:
        when = datetime.fromtimestamp(seconds, tz=UTC)
        text = body.decode()
        headers["webhook-signature"] = " ".join(
            _signer(key).sign(webhook_id, when, text) for key in keys
        )
    return headers
