"""Standard Webhooks headers for every outbound call: an id that stays the same across
retries and replays, the time of this attempt, and, with the destination's secret, an
HMAC-SHA256 signature of "id.timestamp.body" (the `standardwebhooks` reference library)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks.webhooks import Webhook


@lru_cache(maxsize=256)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)  # decodes the key once per secret


def webhook_headers(
    webhook_id: str, timestamp: float, body: bytes, secret: str | None
) -> dict[str, str]:
    seconds = int(timestamp)
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(seconds)}
    if secret is not None:
        when = datetime.fromtimestamp(seconds, tz=UTC)
        headers["webhook-signature"] = _signer(secret).sign(webhook_id, when, body.decode())
    return headers
