"""The client side: a modest, steady load of OpenAI-style requests (streamed and not) spread over
the gateways, each request recorded as the client saw it. Every request carries a unique `user`
field, which the gateway forwards and the fake engine logs, so what the engine sent and what
the ledger stored can be joined to it."""

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

HI = [{"role": "user", "content": "hi"}]
# Statuses and codes that mean the gateway refused the request before admitting it.
REFUSED_CODES = {"rate_limit_exceeded", "admission_unavailable", "insufficient_quota",
                 "invalid_api_key", "tenant_suspended", "model_not_found"}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    model: str
    stream: bool = True
    max_tokens: int = 64
    leave_after: float | None = None  # the client gives up after this long (curl --max-time)


@dataclass
class Outcome:
    tag: str
    tenant: str
    gateway: int
    spec: Spec
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no HTTP answer at all
    code: str = ""  # the error's code, or the transport error's name
    request_id: str | None = None
    chunks: int = 0  # content chunks the client received
    usage: dict | None = None  # usage the client was shown
    completed: bool = False  # the whole answer arrived ([DONE], or the JSON body)
    done: bool = False  # a stream ended with data: [DONE]
    error_event: str = ""  # a stream that ended with an error event: its code
    left: bool = False  # the client went away on purpose, mid-answer

    @property
    def refused(self) -> bool:
        if self.status is None:
            return False
        return self.code in REFUSED_CODES or 400 <= self.status < 500

    @property
    def admitted(self) -> bool:
        """The gateway took it in: an id came back and it was not refused (an engine failure
        after admission counts as admitted)."""
        return self.request_id is not None and not self.refused

    @property
    def reason(self) -> str:
        """Why it was not admitted ("" if it was)."""
        if self.admitted:
            return ""
        if self.status is None:
            return f"no answer ({self.code})"
        return f"{self.status} {self.code}"


def _content(chunk: dict) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or choice.get("text"):
            return True
    return False


@dataclass
class Load:
    """The requests of one scenario."""

    tenants: dict[str, str]  # name -> API key
    gateways: list[str]  # base URLs, http://127.0.0.1:PORT
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30, connect=3), limits=limits)

    async def close(self) -> None:
        await self.client.aclose()

    async def one(self, tenant: str, gateway: int, spec: Spec) -> Outcome:
        outcome = Outcome(tag=uuid.uuid4().hex, tenant=tenant, gateway=gateway, spec=spec,
                          started=time.monotonic())  # fmt: skip
        self.outcomes.append(outcome)
        body = {"model": spec.model, "messages": HI, "max_tokens": spec.max_tokens,
                "stream": spec.stream, "user": outcome.tag}  # fmt: skip
        if spec.stream:
            body["stream_options"] = {"include_usage": True}
        headers = {"Authorization": f"Bearer {self.tenants[tenant]}"}
        url = f"{self.gateways[gateway]}/v1/chat/completions"
        try:
            async with asyncio.timeout(spec.leave_after):
                await self._send(url, body, headers, outcome)
        except TimeoutError:
            outcome.left = spec.leave_after is not None and not outcome.completed
            if not outcome.left:
                outcome.code = "client_timeout"
        except httpx.HTTPError as error:
            outcome.code = type(error).__name__
        outcome.ended = time.monotonic()
        return outcome

    async def _send(self, url: str, body: dict, headers: dict, outcome: Outcome) -> None:
        async with self.client.stream("POST", url, json=body, headers=headers) as response:
            outcome.status = response.status_code
            outcome.request_id = response.headers.get("x-request-id")
            if response.status_code != 200 or not body["stream"]:
                payload = json.loads(await response.aread() or b"{}")
                error = payload.get("error") if isinstance(payload, dict) else None
                outcome.code = (error or {}).get("code") or ""
                outcome.usage = payload.get("usage")
                outcome.chunks = int(bool(payload.get("choices")))
                outcome.completed = response.status_code == 200
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    outcome.done = True
                    outcome.completed = not outcome.error_event
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    outcome.error_event = chunk["error"].get("code") or "error"
                elif chunk.get("usage"):
                    outcome.usage = chunk["usage"]
                outcome.chunks += _content(chunk)

    async def steady(self, stop: asyncio.Event, *, tenant: str, workers: int,
                     pick: Callable[[random.Random], Spec], gateways: list[int] | None = None,
                     pause: float = 0.02) -> None:  # fmt: skip
        """`workers` clients, each sending one request after another (spread over `gateways`,
        default all) until `stop` is set."""
        rng = random.Random(f"{tenant}-{workers}")  # noqa: S311 - a load mix, not secrets
        targets = gateways if gateways is not None else list(range(len(self.gateways)))
        counter = iter(range(10**9))

        async def client() -> None:
            while not stop.is_set():
                target = targets[next(counter) % len(targets)]
                outcome = await self.one(tenant, target, pick(rng))
                if outcome.status is None or outcome.refused:
                    await asyncio.sleep(0.1)  # as a client backs off, never a hot loop
                await asyncio.sleep(pause)

        await asyncio.gather(*[client() for _ in range(workers)])
