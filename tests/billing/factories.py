"""Usage events and ledger rows for billing tests."""

import itertools
import time
from datetime import UTC, datetime

import orjson

from billing.ledger import STREAM, ledger_store
from billing.usage import UsageEvent
from saas_platform.redis_clients import sync_client

_ids = itertools.count(1)


def event(tenant, *, model="llama", prompt=1000, completion=500, at=None, status=200, **extra):
    moment = at or datetime.now(tz=UTC)
    return UsageEvent(
        request_id=extra.pop("request_id", f"req_test_{next(_ids)}"),
        tenant_id=str(tenant.pk),
        api_key_prefix=extra.pop("api_key_prefix", "sk-AbC12345"),
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        timestamp=int(moment.timestamp()),
        latency_ms=20,
        status=status,
        **extra,
    )


def store(*events):
    return ledger_store(list(events))


def stream_aged(tenant, seconds: float) -> None:
    """Append an event to the usage stream as if `seconds` ago (an entry id is its time in ms)."""
    added_ms = int((time.time() - seconds) * 1000)
    sync_client().xadd(STREAM, {"event": orjson.dumps(event(tenant))}, id=f"{added_ms}-0")
