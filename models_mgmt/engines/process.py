"""The `process` engine: one OpenAI-compatible server process per model on a node (llama.cpp's
server, vLLM, ...), started and stopped by the node's worker; stopping it gives the memory back.

Each engine has a JSON record in the state folder, so a restarted worker finds the engines that
really run; it runs in a process group of its own, so a stop reaches all it spawned; and it
carries an environment marker (state folder, model), so one whose record was never written (its
worker died first) can still be found.
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from models_mgmt.engines.errors import EngineError

_STATE_DIR_ENV = "ENGINE_PROCESSES_STATE_DIR"
_MODEL_ENV = "ENGINE_PROCESSES_MODEL_ID"
_POLL_SECONDS = 0.1


class EngineStartError(EngineError):
    """An engine exited, or did not answer in time, while starting: 502 to the client."""


@dataclass(frozen=True)
class RunningEngine:
    model_id: str
    pid: int
    port: int
    base_url: str
    started_at: datetime


@dataclass(frozen=True)
class ReconcileResult:
    alive: list[str]
    removed: list[str]
    # Left alone: another live worker process holds their lock, starting or stopping them.
    busy: list[str] = field(default_factory=list)


@functools.cache
def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, process group, start time), or None if there is no such process. The start
    time (clock ticks since boot, with the boot id) tells a reused pid from the original."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), f"{_boot_id()}:{fields[19]}"


def _vm_rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    return 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _no_record(model_id: str) -> dict:
    return {"model_id": model_id, "pid": 0}  # no process: pid 0 is never one of ours


def _engine(record: dict) -> RunningEngine:
    url = f"http://{record['host']}:{record['port']}/v1"
    started_at = datetime.fromisoformat(record["started_at"])
    return RunningEngine(record["model_id"], record["pid"], record["port"], url, started_at)


class EngineProcesses:
    """The engine server processes of one node, recorded in `state_dir`. Safe to use from
    several threads and processes at once: starting or stopping a model holds its lock file,
    which the kernel releases if the holder dies."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._children: dict[int, subprocess.Popen] = {}  # zombies until waited for

    def start(
        self, model_id: str, command_template: str, *, path: str = "", extra: dict | None = None
    ) -> RunningEngine:
        """Start the model's engine and wait until `GET /v1/models` answers 200 (up to
        `start_timeout`), or return the engine if it already runs.

        The template is split as a shell would (but runs without one), then each argument is
        filled in with {python}, {path}, {port}, {host} and `extra`'s keys, so a value with
        spaces stays one argument. Raises EngineStartError, with the end of the engine's log,
        if it exits or does not answer in time (it is then stopped)."""
        with self._lock(model_id):
            record = self._record(model_id) or _no_record(model_id)
            if self._is_ours(record) and self._answers(record) is not False:
                return _engine(record)
            # Clear away what is left: a dead engine's record and children, an engine alive but
            # not listening while no one else starts it (a load that never finished), or one
            # whose worker died before recording it.
            self._terminate(record)
            return self._spawn(model_id, command_template, path, extra or {})

    def stop(self, model_id: str) -> bool:
        """Stop the model's engine: SIGTERM to its process group, SIGKILL after `stop_timeout`
        seconds (waiting first for a start of the model under way). Returns whether something
        was running; stopping what does not run is a no-op."""
        with self._lock(model_id):
            record = self._record(model_id) or _no_record(model_id)
            running = self._is_ours(record) or bool(self._processes(model_id))
            self._terminate(record)
            return running

    def stop_all(self) -> list[str]:
        """Stop every engine of this folder, recorded or only marked (as when a node is taken
        out of service, or a test ends). Returns the ids of the models that were running."""
        models = {record["model_id"] for record in self._records()}
        models |= {model for _, _, model in self._scan() if model is not None}
        return sorted(model for model in models if self.stop(model))

    def running(self) -> list[RunningEngine]:
        """The recorded engines whose process still runs and is the one started (not a later
        process given the same pid); other records are dropped. Health is not checked: an
        engine still loading is listed (see reconcile())."""
        engines = []
        for record in self._records():
            if self._is_ours(record):
                engines.append(_engine(record))
                continue
            # Read again under the lock: a worker starting the model may have just replaced it.
            with self._lock(record["model_id"], wait=False) as held:
                record = self._record(record["model_id"]) if held else None
                if record is not None and not self._is_ours(record):
                    self._file(record["model_id"], ".json").unlink(missing_ok=True)
        return engines

    def reconcile(self) -> ReconcileResult:
        """Make the records match the engines that really run, e.g. after a worker restart:
        drop the records of dead processes, stop recorded engines that live but do not listen
        (a load that never finished), kill marked processes that no record accounts for.
        Models another live process is starting or stopping are left alone (`busy`)."""
        alive, removed, busy = [], set(), []
        for record in self._records():
            model_id = record["model_id"]
            with self._lock(model_id, wait=False) as held:
                record = self._record(model_id) if held else None
                if not held:
                    busy.append(model_id)
                elif record is None:
                    continue
                elif self._is_ours(record) and self._answers(record) is not False:
                    alive.append(model_id)
                else:
                    self._terminate(record)
                    removed.add(model_id)
        # Processes no record accounts for (their worker died before writing it).
        for model_id in {model for _, _, model in self._scan()} - {None, *alive, *busy}:
            with self._lock(model_id, wait=False) as held:
                if held and self._processes(model_id):
                    self._kill(model_id)
                    removed.add(model_id)
        return ReconcileResult(alive=alive, removed=sorted(removed), busy=busy)

    def resident_bytes(self, model_id: str) -> int | None:
        """The engine's resident memory (VmRSS of its process and all it spawned), or None
        when the model does not run. Reported instead of GPU memory on nodes without a GPU."""
        record = self._record(model_id)
        if record is None or not self._is_ours(record):
            return None
        return sum(_vm_rss(pid) for pid, _ in self._processes(model_id, group=record["pid"]))

    # Starting

    def _spawn(self, model_id: str, template: str, path: str, extra: dict) -> RunningEngine:
        port = self._free_port()
        values = {**extra, "python": sys.executable, "path": path, "port": port, "host": self.host}
        try:
            command = [part.format(**values) for part in shlex.split(template)]
        except (KeyError, IndexError, AttributeError, ValueError) as error:
            message = f"The engine command for {model_id} is not a valid template: {error!r}."
            raise EngineStartError(message) from None
        log_path = self._file(model_id, ".log")
        marker = {_STATE_DIR_ENV: str(self.state_dir), _MODEL_ENV: model_id}
        with log_path.open("wb") as log:
            try:
                child = subprocess.Popen(  # noqa: S603 - staff's template, no shell # nosec B603
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **marker, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True,
                )
            except OSError as error:
                message = f"Could not start the engine for {model_id}: {error}."
                raise EngineStartError(message) from error
        self._children[child.pid] = child
        record = {
            "model_id": model_id,
            "pid": child.pid,
            "port": port,
            "host": self.host,
            "command": command,
            "started_at": datetime.now(UTC).isoformat(),
            "process_start": (_proc_stat(child.pid) or ("", 0, ""))[2],
        }
        try:
            self._write(record)
            self._wait_until_healthy(record, child, log_path)
        except BaseException:
            # Whatever ended the wait (an error, the task's time limit), leave no process behind.
            self._terminate(record)
            raise
        return _engine(record)

    def _wait_until_healthy(self, record: dict, child: subprocess.Popen, log_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if child.poll() is not None:
                problem = f"exited with code {child.returncode} while starting"
            elif self._answers(record, read_timeout=2.0) is True:
                return
            elif time.monotonic() >= deadline:
                problem = (
                    f"did not answer on port {record['port']} within {self.start_timeout:g}s "
                    "and was stopped"
                )
            else:
                time.sleep(_POLL_SECONDS)
                continue
            raise EngineStartError(
                f"The engine for {record['model_id']} {problem}. "
                f"The end of its log {log_path}:\n{_tail(log_path)}"
            )

    def _free_port(self) -> int:
        # The engine binds it a moment later; should another process take it in between, the
        # engine exits at once and start() says so.
        with socket.socket() as sock:
            sock.bind((self.host, 0))
            return sock.getsockname()[1]

    def _answers(self, record: dict, read_timeout: float = 5.0) -> bool | None:
        """True: GET /v1/models answers 200. None: the engine took the connection but did not
        answer in time, so it has loaded and is busy (llama.cpp's server answers only between
        generations). False: nothing listens (still loading) or it answered an error."""
        url = _engine(record).base_url + "/models"
        try:
            # No proxies from the environment: the engine is on this host.
            timeout = httpx.Timeout(read_timeout, connect=1.0)
            response = httpx.get(url, timeout=timeout, trust_env=False)
        except httpx.ReadTimeout:
            return None
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # Stopping

    def _terminate(self, record: dict) -> None:
        """Stop the recorded engine and whatever else is left of the model's; forget it."""
        # Never our own group, whatever a record says.
        ours = self._is_ours(record) and record["pid"] != os.getpgrp()
        self._kill(record["model_id"], group=record["pid"] if ours else None)
        self._file(record["model_id"], ".json").unlink(missing_ok=True)

    def _kill(self, model_id: str, *, group: int | None = None) -> None:
        """SIGTERM the model's processes (see _processes), then SIGKILL what is left. One that
        survives SIGKILL (stuck in a GPU driver) keeps its marker for a later reconcile()."""
        for sig, patience in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            if group is not None:  # the group too: it reaches a child forked a moment ago
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
            for pid, pgid in self._processes(model_id, group=group):
                if pgid != group:  # once is enough: some servers take a second one as "hurry"
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + patience
            while self._processes(model_id, group=group) or self._group_exists(group):
                if time.monotonic() >= deadline:
                    break  # on to SIGKILL
                time.sleep(_POLL_SECONDS)
            else:
                return  # all gone

    def _group_exists(self, group: int | None) -> bool:
        """Whether anything is left of process group `group`, zombies included. The scan skips
        zombies, but a multi-threaded engine's leader shows as a zombie while its other threads
        still exit (unmapping the model takes a while), and the kernel lets no one reap it
        before they are done: the group lives on until then."""
        if group is None:
            return False
        self._reap(group)
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a later group of another user's under the same id
            return False
        return True

    def _processes(self, model_id: str, *, group: int | None = None) -> list[tuple[int, int]]:
        """(pid, process group) of the live processes of the model's engines: those in process
        group `group`, and those carrying the model's marker from this folder."""
        if group is not None:
            self._reap(group)
        scan = self._scan()
        return [(pid, pgid) for pid, pgid, model in scan if pgid == group or model == model_id]

    def _scan(self) -> list[tuple[int, int, str | None]]:
        """(pid, process group, model id marked for this folder or None) of live processes."""
        found = []
        for pid in (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()):
            stat = _proc_stat(pid)
            if stat is None or stat[0] == "Z" or pid == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # gone, or another user's
                environ = []
            values = dict(item.decode(errors="replace").partition("=")[::2] for item in environ)
            mine = values.get(_STATE_DIR_ENV) == str(self.state_dir)
            found.append((pid, stat[1], values.get(_MODEL_ENV) if mine else None))
        return found

    def _is_ours(self, record: dict) -> bool:
        """Whether the recorded process lives and is the one started, not a later one given
        the same pid."""
        stat = _proc_stat(record["pid"])
        if stat is None or stat[2] != record.get("process_start"):
            return False
        if stat[0] == "Z":  # exited; reaped here if it is this process's child
            self._reap(record["pid"])
            return False
        return True

    def _reap(self, pid: int) -> None:
        # An exited child stays a zombie until its parent waits for it.
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is not None:
                self._children.pop(pid, None)
        else:
            with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
                os.waitpid(pid, os.WNOHANG)

    # Records

    def _file(self, model_id: str, suffix: str) -> Path:
        # Model ids may hold "/" and be long: a readable part and a hash make a safe name.
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60]
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        return self.state_dir / f"{readable}-{digest}{suffix}"

    @contextlib.contextmanager
    def _lock(self, model_id: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the model's lock file; yields False if `wait` is off and another holds it."""
        with self._file(model_id, ".lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True  # closing the file releases the lock

    def _record(self, model_id: str) -> dict | None:
        try:
            return json.loads(self._file(model_id, ".json").read_text())
        except FileNotFoundError:
            return None

    def _records(self) -> list[dict]:
        records = []
        for path in sorted(self.state_dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                records.append(json.loads(path.read_text()))
        return records

    def _write(self, record: dict) -> None:
        # Replaced whole, so a reader never sees half a record. No fsync: after a power loss
        # the engines are gone too, and the boot id in process_start marks the record stale.
        path = self._file(record["model_id"], ".json")
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(record))
        os.replace(temp, path)
