"""Usage events and ledger rows for billing tests."""

import itertools
from datetime import UTC, datetime

from billing.ledger import ledger_store
from billing.usage import UsageEvent

_ids = itertools.count(1)


def event(tenant, *, model="llama", prompt=1000, completion=500, at=None, status=200, **extra):
    moment = at or datetime.now(tz=UTC)
    return UsageEvent(
        request_id=extra.pop("request_id", f"req_test_{next(_ids)}"),
        tenant_id=str(tenant.pk),
        api_key_prefix="sk-AbC12345",
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
