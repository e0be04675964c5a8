"""Loading and unloading models on nodes: the decisions each node's worker makes.

Every decision about a node runs in that node's worker (its Celery queue `node.<name>`, one
task at a time, and a Redis lock besides), so a node's bookkeeping has one writer. The choice
of victims is the ResourceManager's, rebuilt from the node's placements with the live in-flight
counts and last-use times that the gateways keep in Redis.
"""

import logging
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record, changed
from models_mgmt.engines.errors import EngineError
from models_mgmt.live import live_state
from models_mgmt.models import Node, Placement, ServedModel
from models_mgmt.resource_manager import ResourceManager, ResourceManagerError
from saas_platform import metrics
from saas_platform.redis_clients import sync_client

logger = logging.getLogger(__name__)


class PlacementError(EngineError):
    status = 503
    code = "model_capacity"
    retry_after = 5


def engine_processes(node: Node):
    from models_mgmt.engines.process import EngineProcesses

    state_dir = Path(settings.NODE_STATE_DIR) / node.name
    state_dir.mkdir(parents=True, exist_ok=True)
    return EngineProcesses(state_dir)


def _lock_name(node: Node) -> str:
    return f"node-lock:{{{node.name}}}"  # the lock's scripts touch this one key


@contextmanager
def node_lock(node: Node):
    """One decision at a time per node, even if two workers consume its queue by mistake."""
    if not settings.REDIS_URL:
        yield
        return
    lock = sync_client().lock(_lock_name(node), timeout=900)
    if not lock.acquire(blocking_timeout=900):
        raise PlacementError(f"node {node.name} is busy with another decision")
    try:
        yield
    finally:
        lock.release()


def _manager(node: Node, *, excluding: ServedModel) -> ResourceManager:
    """The node's ResourceManager as it stands: what holds memory, in LRU order, busy or not."""
    live = live_state()
    manager = ResourceManager(node.vram_budget_bytes,
                              min_residency_seconds=settings.MIN_RESIDENCY_SECONDS)  # fmt: skip
    held = [
        p
        for p in node.placements.select_related("model").exclude(model=excluding)
        if p.holds_memory
    ]
    held.sort(key=lambda p: live.last_used_ms(p.model.model_id, node.name) or 0)
    for placement in held:
        model_id = placement.model.model_id
        manager.load(model_id, max(1, placement.vram_bytes), pin=placement.pinned)
        if placement.state != Placement.State.READY:
            manager.begin_request(model_id)  # loading or draining: not a victim
        for _ in range(live.in_flight(model_id, node.name)):
            manager.begin_request(model_id)
    return manager


def _start_engine(node: Node, model: ServedModel) -> str:
    """Start (or check) the model's engine on this node; return its OpenAI base URL."""
    if model.engine == ServedModel.Engine.PROCESS:
        options = model.engine_settings or {}
        if not options.get("command"):
            raise EngineError(f"{model.model_id} has no engine command template")
        running = engine_processes(node).start(
            model.model_id, options["command"], path=options.get("path", ""),
            extra={k: v for k, v in options.items() if k not in ("command", "path")},
        )  # fmt: skip
        return running.base_url
    if model.engine == ServedModel.Engine.OPENAI:
        try:
            httpx.get(f"{model.base_url}/models", timeout=10).raise_for_status()
        except httpx.HTTPError as error:
            raise EngineError(f"{model.base_url} is not healthy: {error}") from None
        return model.base_url
    return "local://in-process"


def _stop_engine(node: Node, model: ServedModel) -> None:
    if model.engine == ServedModel.Engine.PROCESS:
        engine_processes(node).stop(model.model_id)


def _unload(node: Node, placement: Placement, *, reason: str) -> None:
    """Withdraw the route (no new requests), wait for requests in flight (bounded by
    DRAIN_TIMEOUT_SECONDS, after which they are cut: the stated policy), stop, forget."""
    live = live_state()
    model_id = placement.model.model_id
    live.withdraw(model_id, node.name)
    Placement.objects.filter(pk=placement.pk).update(state=Placement.State.DRAINING,
                                                     updated_at=timezone.now())  # fmt: skip
    deadline = time.monotonic() + settings.DRAIN_TIMEOUT_SECONDS
    while live.in_flight(model_id, node.name) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if live.in_flight(model_id, node.name) > 0:
        logger.warning("drain of %s on %s timed out; stopping it", model_id, node.name)
    _stop_engine(node, placement.model)
    live.forget(model_id, node.name)
    audit_record(
        action="model.evicted",
        obj=placement.model,
        object_repr=f"{model_id} on {node.name}",
        changes={"node": (node.name, None), "reason": (None, reason)},
    )
    placement.delete()
    metrics.EVICTIONS.labels(node=node.name, reason=reason).inc()
    logger.info("unloaded %s from %s (%s)", model_id, node.name, reason)


def placement_load(*, node_name: str, model_id: str, pin: bool = False) -> Placement:
    """Load a model on this node (idempotent), evicting least-recently-used models to make room;
    a model never leaves while it serves requests. Runs in the node's worker."""
    node = Node.objects.get(name=node_name)
    model = ServedModel.objects.get(model_id=model_id)
    with node_lock(node):
        placement, _ = Placement.objects.get_or_create(
            node=node, model=model, defaults={"vram_bytes": model.vram_bytes}
        )
        if placement.state == Placement.State.READY:
            live_state().publish(model.model_id, node.name, placement.endpoint_url)
            return placement
        started = time.monotonic()
        try:
            victims = _manager(node, excluding=model).load(
                model.model_id, max(1, model.vram_bytes), pin=pin or model.pinned
            )
        except ResourceManagerError as error:
            _fail(placement, f"no room on {node.name}: {error}")
            raise PlacementError(f"No capacity for {model.model_id} on {node.name}.") from None
        for victim in node.placements.filter(model__model_id__in=victims).select_related("model"):
            _unload(node, victim, reason="lru")
        placement.state, placement.failure = Placement.State.LOADING, ""
        placement.vram_bytes, placement.pinned = model.vram_bytes, pin or model.pinned
        placement.save()
        try:
            endpoint = _start_engine(node, model)
        except EngineError as error:
            _fail(placement, error.message)
            raise
        placement.state, placement.endpoint_url = Placement.State.READY, endpoint
        placement.loaded_at = placement.updated_at = timezone.now()
        placement.save()
        audit_record(
            action="model.loaded",
            obj=model,
            object_repr=f"{model.model_id} on {node.name}",
            changes={"node": (None, node.name), "pinned": (None, placement.pinned)},
        )
        live_state().publish(model.model_id, node.name, endpoint)
        metrics.LOADS.labels(node=node.name).inc()
        metrics.LOAD_SECONDS.observe(time.monotonic() - started)
        return placement


def _fail(placement: Placement, reason: str) -> None:
    placement.state, placement.failure, placement.updated_at = (
        Placement.State.FAILED,
        reason,
        timezone.now(),
    )
    placement.save()
    logger.error("load of %s on %s failed: %s", placement.model, placement.node, reason)


def placement_evict(*, node_name: str, model_id: str) -> bool:
    """Unload a model from this node once its requests have ended. Pinned models stay."""
    node = Node.objects.get(name=node_name)
    with node_lock(node):
        placement = node.placements.select_related("model").filter(model__model_id=model_id).first()
        if placement is None:
            return False
        if placement.pinned and placement.state == Placement.State.READY:
            raise PlacementError(f"{model_id} is pinned on {node.name}; unpin it first")
        _unload(node, placement, reason="requested")
        return True


def placement_reconcile(*, node_name: str, restarted: bool = False) -> list[str]:
    """Make the node's bookkeeping match the engines that really run (after a worker restart,
    even one killed mid-load). Returns the models whose placement was dropped.

    `restarted`: called by the node's worker as it starts. A node has one worker, so a lock
    still held is its dead predecessor's and is broken rather than waited out."""
    node = Node.objects.get(name=node_name)
    if restarted and settings.REDIS_URL:
        sync_client().delete(_lock_name(node))
    with node_lock(node):
        processes = engine_processes(node)
        processes.reconcile()
        running = {engine.model_id: engine for engine in processes.running()}
        dropped = []
        for placement in node.placements.select_related("model"):
            model_id = placement.model.model_id
            is_process = placement.model.engine == ServedModel.Engine.PROCESS
            alive = model_id in running or not is_process
            if placement.state == Placement.State.READY and alive:
                endpoint = running[model_id].base_url if is_process else placement.endpoint_url
                if endpoint != placement.endpoint_url:
                    placement.endpoint_url = endpoint
                    placement.save(update_fields=["endpoint_url"])
                live_state().publish(model_id, node.name, endpoint)
                continue
            if placement.state == Placement.State.FAILED:
                continue
            # Loading, queued or unloading when the worker died, or ready without its engine.
            if is_process and model_id in running:
                processes.stop(model_id)
            live_state().forget(model_id, node.name)
            placement.delete()
            dropped.append(model_id)
        known = set(node.placements.values_list("model__model_id", flat=True))
        for model_id in set(running) - known:
            processes.stop(model_id)  # an engine nobody accounts for holds memory: stop it
        return dropped


_NODE_FIELDS = ("name", "vram_budget_bytes", "enabled")


@transaction.atomic
def node_add(*, name: str, vram_bytes: int, enabled: bool = True) -> Node:
    node = Node(name=name, vram_budget_bytes=vram_bytes, enabled=enabled)
    node.full_clean()
    node.save()
    after = {field: getattr(node, field) for field in _NODE_FIELDS}
    audit_record(action="node.added", obj=node, changes=changed({}, after))
    return node


@transaction.atomic
def node_update(*, node: Node, **changes) -> Node:
    """Change a node's name, VRAM budget or whether it takes new loads."""
    unknown = set(changes) - set(_NODE_FIELDS)
    if unknown:
        raise TypeError(f"unknown node settings: {sorted(unknown)}")
    before = Node.objects.filter(pk=node.pk).values(*_NODE_FIELDS).first() or {}
    for field, value in changes.items():
        setattr(node, field, value)
    node.full_clean()
    node.save()
    difference = changed(before, {field: getattr(node, field) for field in _NODE_FIELDS})
    if difference:
        audit_record(action="node.changed", obj=node, changes=difference)
    return node


def node_heartbeat(*, node_name: str) -> None:
    """The node is alive: record it, and route to its ready models again (if a silence had
    withdrawn them)."""
    Node.objects.filter(name=node_name).update(last_heartbeat=datetime.now(tz=UTC))
    ready = Placement.objects.filter(node__name=node_name, state=Placement.State.READY)
    for placement in ready.select_related("model"):
        live_state().publish(placement.model.model_id, node_name, placement.endpoint_url)


def withdraw_silent_nodes() -> list[str]:
    """Take nodes whose heartbeat stopped out of routing (their placements stay recorded)."""
    silent = [node for node in Node.objects.filter(enabled=True) if node.last_heartbeat
              and not _is_live(node)]  # fmt: skip
    for node in silent:
        for placement in node.placements.select_related("model"):
            live_state().withdraw(placement.model.model_id, node.name)
        logger.warning("node %s is silent: out of routing", node.name)
    return [node.name for node in silent]


def placement_request_load(*, model: ServedModel, node: Node | None = None, pin: bool = False):
    """Ask a node's worker to load a model: the given node, else the one with the most free
    bytes among the live ones. Returns the node chosen."""
    from models_mgmt.tasks import load_model

    if node is None:
        node = _choose_node(model)
    placement, created = Placement.objects.get_or_create(
        node=node, model=model, defaults={"vram_bytes": model.vram_bytes}
    )
    if not created and placement.state == Placement.State.FAILED:
        placement.state, placement.updated_at = Placement.State.QUEUED, timezone.now()
        placement.save(update_fields=["state", "updated_at"])
    load_model.apply_async(args=[node.name, model.model_id, pin], queue=node.queue)
    return node


def placement_request_scale_out(*, model: ServedModel) -> Node | None:
    """Ask for one more replica of a `process` model whose queue has held waiters for a while,
    on a node that does not have it yet, unless it has `max_replicas` placements already or one
    is still on its way. Returns the node asked, or None."""
    if model.engine != ServedModel.Engine.PROCESS:
        return None
    placed = Placement.objects.filter(model=model).exclude(state=Placement.State.FAILED)
    if placed.count() >= model.max_replicas:
        return None
    if placed.filter(state__in=[Placement.State.QUEUED, Placement.State.LOADING]).exists():
        return None  # one is on its way: the queue may drain once it is ready
    having = set(Placement.objects.filter(model=model).values_list("node__name", flat=True))
    try:
        node = _choose_node(model, excluding=having)
    except PlacementError:
        return None  # no other node has room: the queue keeps its bound
    logger.info("scaling %s out to %s", model.model_id, node.name)
    return placement_request_load(model=model, node=node)


def _choose_node(model: ServedModel, *, excluding: set[str] = frozenset()) -> Node:
    """The node with the most free bytes that fit the model; else the one where evicting idle,
    unpinned models makes the most room (never one where only busy models could make it).
    Nodes named in `excluding` are left out."""
    nodes = list(
        Node.objects.filter(enabled=True).exclude(name__in=excluding)
        .prefetch_related("placements__model")
    )  # fmt: skip
    live_nodes = [n for n in nodes if _is_live(n)] or nodes
    if not live_nodes:
        raise PlacementError("No node is available to load models.")
    live = live_state()

    def room(node: Node) -> tuple[int, int]:
        held = [p for p in node.placements.all() if p.holds_memory]
        free = node.vram_budget_bytes - sum(p.vram_bytes for p in held)
        evictable = sum(
            p.vram_bytes for p in held
            if p.state == Placement.State.READY and not p.pinned
            and live.in_flight(p.model.model_id, node.name) == 0
        )  # fmt: skip
        return free, evictable

    rooms = {node: room(node) for node in live_nodes}
    fits_now = [n for n, (free, _idle) in rooms.items() if free >= model.vram_bytes]
    if fits_now:
        return max(fits_now, key=lambda n: rooms[n][0])
    can_make_room = [n for n, (free, idle) in rooms.items() if free + idle >= model.vram_bytes]
    if can_make_room:
        return max(can_make_room, key=lambda n: sum(rooms[n]))
    raise PlacementError(f"No node has room for {model.model_id} now.")


def _is_live(node: Node) -> bool:
    if node.last_heartbeat is None:
        return False
    age = (timezone.now() - node.last_heartbeat).total_seconds()
    return age < settings.NODE_HEARTBEAT_TIMEOUT_SECONDS


def placement_measure(*, node_name: str) -> None:
    """Record what each ready process engine really holds, and warn when it exceeds what its
    model declares (the node's budget is kept on declared bytes)."""
    from models_mgmt.memory import measured_bytes

    node = Node.objects.get(name=node_name)
    processes = engine_processes(node)
    ready = node.placements.filter(state=Placement.State.READY,
                                   model__engine=ServedModel.Engine.PROCESS)  # fmt: skip
    for placement in ready.select_related("model"):
        measured, source = measured_bytes(processes, placement.model.model_id)
        if measured is None:
            continue
        Placement.objects.filter(pk=placement.pk).update(measured_bytes=measured,
                                                         measured_source=source)  # fmt: skip
        if source == "gpu" and measured > placement.vram_bytes:
            logger.warning("%s on %s uses %d bytes, declared %d", placement.model, node.name,
                           measured, placement.vram_bytes)  # fmt: skip
