"""A load generator, run in its own process, on raw asyncio sockets (HTTP/1.1, keep-alive): a
general-purpose client library (httpx) costs more CPU per request than a fast server, and the
load generator shares a core with the upstream, so a heavy client would flatter the gateway.

    python -m bench.loadgen chat URL KEY MODEL CONCURRENCY REQUESTS
        N non-streaming chat requests at a concurrency: requests/s and latency percentiles.
    python -m bench.loadgen streams URL KEY MODEL STREAMS
        STREAMS streaming requests held open at once: time to first chunk and whether each
        stream reached [DONE].
    python -m bench.loadgen duration URL KEY MODEL CONCURRENCY SECONDS [PID ...]
        Non-streaming chat at a concurrency for SECONDS (after a one-second warm-up), each
        request given 2 s: requests/s, latency percentiles, errors and timeouts counted apart,
        the CPU time (utime + stime) the processes PID and all their descendants used in the
        measured window per request, and how busy each CPU of the machine was.

Prints one JSON object.
"""

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 2.0
WARM_UP_SECONDS = 1.0


class Connection:
    def __init__(self, url: str, key: str):
        parts = urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path
        self.key = key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {self.prefix}/chat/completions HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    async def body(self, headers: dict[bytes, bytes]):
        """The body's pieces as they arrive (content-length or chunked)."""
        if b"content-length" in headers:
            yield await self.reader.readexactly(int(headers[b"content-length"]))
            return
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            piece = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            yield piece[:-2]


async def chat(url: str, key: str, model: str, concurrency: int, total: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(total))

    async def worker():
        nonlocal failures
        connection = Connection(url, key)
        for _ in remaining:
            started = time.perf_counter()
            try:
                if connection.writer is None:
                    await connection.open()
                connection.send(body)
                status, headers = await connection.head()
                async for _piece in connection.body(headers):
                    pass
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failures += 1  # counted, not fatal: the table reports failures
                connection.close()
                continue
            latencies.append(time.perf_counter() - started)
            failures += status != 200
            if headers.get(b"connection") == b"close":
                connection.close()
        connection.close()

    warm_up = iter(range(min(50, total)))
    remaining = warm_up
    await asyncio.gather(*[worker() for _ in range(min(10, concurrency))])
    latencies.clear()
    failures = 0
    remaining = iter(range(total))
    began = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "failures": failures,
        "requests": len(latencies),
    }


async def _exchange(connection: Connection, body: dict) -> int:
    """One request on the connection (opened if needed) and its whole response: the status."""
    if connection.writer is None:
        await connection.open()
    connection.send(body)
    status, headers = await connection.head()
    async for _piece in connection.body(headers):
        pass
    if headers.get(b"connection") == b"close":
        connection.close()
    return status


# Services the targets share with whatever else runs on the machine: not counted as other work.
SHARED_SERVICES = ("redis-server", "postgres")


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every process now: pid -> (parent pid, utime + stime in clock ticks, name)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, _, rest = stat.read_text().partition(" (")[2].rpartition(")")
            fields = rest.split()  # state, ppid, ... utime and stime are the 12th and 13th
            found[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name)
        except (OSError, IndexError, ValueError):
            continue  # it exited while the tree was read
    return found


def _tree(processes: dict, roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _ticks, _name) in processes.items():
        children.setdefault(parent, []).append(pid)
    tree, frontier = set(), [pid for pid in roots if pid in processes]
    while frontier:
        pid = frontier.pop()
        tree.add(pid)
        frontier += children.get(pid, [])
    return tree


def process_tree(roots: list[int]) -> dict[int, int]:
    """The processes `roots` and all their descendants, now: pid -> utime + stime in clock
    ticks (a process that already exited is no longer there)."""
    processes = _processes()
    return {pid: processes[pid][1] for pid in _tree(processes, roots)}


def other_work(own_root: int) -> dict[int, int]:
    """Clock ticks of every process outside `own_root`'s tree, but the shared services."""
    processes = _processes()
    own = _tree(processes, [own_root])
    return {pid: ticks for pid, (_parent, ticks, name) in processes.items()
            if pid not in own and name not in SHARED_SERVICES}  # fmt: skip


def cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (utime + stime) used so far by `roots` and their descendants (sample a tree
    that keeps its processes: an exited one's time is no longer counted)."""
    return sum(process_tree(roots).values()) / os.sysconf("SC_CLK_TCK")


def cpu_busy() -> list[tuple[int, int]]:
    """Each CPU's (busy, total) jiffies since boot, from /proc/stat (idle and iowait are not
    busy)."""
    found = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(value) for value in values]
            found.append((sum(ticks) - ticks[3] - ticks[4], sum(ticks)))
    return found


async def duration(
    url: str, key: str, model: str, concurrency: int, seconds: float, pids: list[int]
) -> dict:
    """Closed-loop load for `seconds`: each of `concurrency` connections sends its next request
    when the last one ended. A request that takes over REQUEST_TIMEOUT is a timeout (its
    connection is dropped); a refused or cut connection or a status other than 200 is an
    error, after which that connection waits 50 ms (a target that refuses is not hammered).
    Requests/s counts the 200s that ended inside the window; the percentiles and the CPU per
    request take every 200, those that ended after the window too (they are waited for, and
    the CPU is read once they are done). Other work: the CPU of processes outside the tree of
    `bench` (the process that started this one), but Redis and PostgreSQL. Raises SystemExit if
    no request of the warm-up got a 200: a bad key or model, or a broken target, is not
    measured."""
    bench = os.getppid()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    latencies: list[float] = []
    counts = {"errors": 0, "timeouts": 0, "in_window": 0}
    statuses: dict[str, int] = {}

    async def worker(until: float) -> None:
        connection = Connection(url, key)
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(_exchange(connection, body), REQUEST_TIMEOUT)
            except TimeoutError:
                counts["timeouts"] += 1
                connection.close()
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                status, ended = type(error).__name__, 0.0
                connection.close()
            else:
                ended = time.perf_counter()
            if status != 200:
                counts["errors"] += 1
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                await asyncio.sleep(0.05)
                continue
            latencies.append(ended - started)
            counts["in_window"] += ended <= until
        connection.close()

    warm_until = time.perf_counter() + WARM_UP_SECONDS
    await asyncio.gather(*[worker(warm_until) for _ in range(min(32, concurrency))])
    warmed = len(latencies)
    if not warmed:
        raise SystemExit(f"no request of the warm-up succeeded: {statuses or 'all timed out'}")
    latencies.clear()
    counts.update(errors=0, timeouts=0, in_window=0)
    cpu_before, busy_before, others_before = cpu_seconds(pids), cpu_busy(), other_work(bench)
    began = time.perf_counter()
    await asyncio.gather(*[worker(began + seconds) for _ in range(concurrency)])
    cpu = cpu_seconds(pids) - cpu_before
    others = sum(ticks - others_before.get(pid, 0) for pid, ticks in other_work(bench).items())
    busy = [
        round(100 * (busy - busy_was) / max(1, total - total_was))
        for (busy, total), (busy_was, total_was) in zip(cpu_busy(), busy_before, strict=True)
    ]
    latencies.sort()
    done = len(latencies)
    return {
        "rps": counts["in_window"] / seconds,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p99_ms": latencies[max(0, int(done * 0.99) - 1)] * 1000 if latencies else None,
        "requests": done,
        "errors": counts["errors"],
        "timeouts": counts["timeouts"],
        "cpu_ms_per_request": cpu * 1000 / done if pids and done else None,
        "warm_up_requests": warmed,
        "seconds": seconds,
        "cpu_busy_percent": busy,  # each CPU's, the whole machine's work in the window
        # cores used by processes outside the bench's tree (but Redis and PostgreSQL)
        "other_cores": others / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - began),
    }


async def streams(url: str, key: str, model: str, count: int) -> dict:
    """`count` streams opened together and held until the engine ends them."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    first: list[float] = []
    completed = 0
    errors: dict[str, int] = {}
    opened = asyncio.Event()
    open_count = 0

    async def one():
        nonlocal completed, open_count
        connection = Connection(url, key)
        try:
            await connection.open()
            started = time.perf_counter()
            connection.send(body)
            status, headers = await connection.head()
            if status != 200:
                raise ValueError(f"status {status}")
            seen = b""
            async for piece in connection.body(headers):
                if not seen:
                    first.append(time.perf_counter() - started)
                    open_count += 1
                    if open_count == count:
                        opened.set()
                seen = (seen + piece)[-64:]
            if b"[DONE]" in seen:
                completed += 1
            else:
                errors["no [DONE]"] = errors.get("no [DONE]", 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            name = type(error).__name__ if not isinstance(error, ValueError) else str(error)
            errors[name] = errors.get(name, 0) + 1
        finally:
            connection.close()

    began = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    # Tell the parent (which samples the gateway's memory) when every stream is open.
    waiter = asyncio.create_task(opened.wait())
    done, _ = await asyncio.wait([waiter, asyncio.gather(*tasks)], return_when="FIRST_COMPLETED")
    if waiter in done:
        print("open", flush=True)
    await asyncio.gather(*tasks)
    first.sort()
    return {
        "streams": count,
        "completed": completed,
        "errors": errors,
        "ttft_p50_ms": statistics.median(first) * 1000 if first else None,
        "ttft_p99_ms": first[max(0, int(len(first) * 0.99) - 1)] * 1000 if first else None,
        "seconds": time.perf_counter() - began,
    }


if __name__ == "__main__":
    mode, url, key, model, *numbers = sys.argv[1:]
    if mode == "chat":
        result = asyncio.run(chat(url, key, model, int(numbers[0]), int(numbers[1])))
    elif mode == "duration":
        concurrency, seconds, *pids = numbers
        if not 0 < float(seconds) <= 3600 or not all(Path(f"/proc/{pid}").exists() for pid in pids):
            raise SystemExit(
                "usage: duration URL KEY MODEL CONCURRENCY SECONDS [PID ...], SECONDS at most "
                f"3600, each PID running; got: {' '.join(sys.argv[1:])}"
            )
        result = asyncio.run(
            duration(url, key, model, int(concurrency), float(seconds), [int(p) for p in pids])
        )
    else:
        result = asyncio.run(streams(url, key, model, int(numbers[0])))
    print(json.dumps(result), flush=True)
