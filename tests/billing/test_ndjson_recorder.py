"""The seed's NDJSONRecorder: one JSON object per line, with the seed's field names, whole
lines even with many processes appending at once."""

import json
import multiprocessing

from billing.usage import NDJSONRecorder, UsageEvent


def _event(writer: int, index: int) -> UsageEvent:
    return UsageEvent(
        request_id=f"req_{writer}_{index}",
        tenant_id=str(writer),
        api_key_prefix="sk-AbC12345",
        model="m" * 300,  # long lines make torn writes visible
        prompt_tokens=index,
        completion_tokens=2 * index,
        timestamp=1_700_000_000,
        latency_ms=5,
        status=200,
    )


def _write_many(path: str, writer: int) -> None:
    recorder = NDJSONRecorder(path)
    for index in range(200):
        recorder.record(_event(writer, index))


def test_lines_from_concurrent_processes_never_interleave(tmp_path):
    path = str(tmp_path / "usage.ndjson")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(path, w)) for w in range(6)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)

    lines = (tmp_path / "usage.ndjson").read_text().splitlines()
    events = [json.loads(line) for line in lines]

    assert len(events) == 6 * 200
    assert len({e["request_id"] for e in events}) == 6 * 200
    first = events[0]
    for field in ("tenant_id", "model", "prompt_tokens", "completion_tokens", "timestamp"):
        assert field in first  # the seed's names
    assert {"request_id", "api_key_prefix", "latency_ms", "status", "usage_source"} <= set(first)
