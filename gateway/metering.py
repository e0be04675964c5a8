"""Step 6: what an admitted request used, counted for its one usage event.

The relay fills in the token counts (the engine's report, or the gateway's own count); the
pipeline turns the meter into the event when the request has ended, however it ended.
"""

import time

from billing.usage import UsageEvent

CLIENT_CLOSED_REQUEST = 499  # the status recorded when the client went away (nginx's)


class UsageMeter:
    __slots__ = ("api_key_prefix", "cached_tokens", "completion_tokens", "endpoint", "model",
                 "prompt_tokens", "queue_ms", "request_id", "started", "tenant_id",
                 "usage_source")  # fmt: skip

    def __init__(self, *, request_id: str, tenant_id: int, api_key_prefix: str, endpoint: str,
                 model: str):  # fmt: skip
        self.request_id = request_id
        self.tenant_id = tenant_id
        self.api_key_prefix = api_key_prefix
        self.endpoint = endpoint
        self.model = model
        self.started = time.monotonic()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # of the prompt tokens, those the engine's prompt cache served
        # "reported": the engine's own usage; "counted": the gateway counted the tokens itself.
        self.usage_source = "reported"
        self.queue_ms = 0  # waiting in the model's fair queue for an engine slot

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def event(self, *, status: int) -> UsageEvent:
        return UsageEvent(
            request_id=self.request_id,
            tenant_id=str(self.tenant_id),
            api_key_prefix=self.api_key_prefix,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            timestamp=int(time.time()),
            latency_ms=int((time.monotonic() - self.started) * 1000),
            status=status,
            usage_source=self.usage_source,
            endpoint=self.endpoint,
            cached_tokens=self.cached_tokens,
            queue_ms=self.queue_ms,
        )
