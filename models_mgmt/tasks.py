"""Node tasks: thin, idempotent, acks_late; each runs on its node's queue (`node.<name>`)."""

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from models_mgmt import placements
from models_mgmt.live import live_state
from models_mgmt.models import Node, Placement

RETRY = {"autoretry_for": (ConnectionError, OSError), "retry_backoff": True, "max_retries": 3}


@shared_task(acks_late=True, time_limit=900, ignore_result=True, **RETRY)
def load_model(node_name: str, model_id: str, pin: bool = False) -> None:
    placements.placement_load(node_name=node_name, model_id=model_id, pin=pin)


@shared_task(acks_late=True, time_limit=900, ignore_result=True, **RETRY)
def evict_model(node_name: str, model_id: str) -> None:
    placements.placement_evict(node_name=node_name, model_id=model_id)


@shared_task(acks_late=True, time_limit=300, ignore_result=True)
def node_tick(node_name: str) -> None:
    """Heartbeat, reconcile with the engines that really run, measure them, then unload models
    idle past their keep-alive."""
    placements.node_heartbeat(node_name=node_name)
    placements.placement_reconcile(node_name=node_name)
    placements.placement_measure(node_name=node_name)
    live = live_state()
    now_ms = timezone.now().timestamp() * 1000
    ready = Placement.objects.filter(node__name=node_name, state=Placement.State.READY,
                                     pinned=False).select_related("model")  # fmt: skip
    for placement in ready:
        keep_alive = placement.model.keep_alive_seconds
        last = live.last_used_ms(placement.model.model_id, node_name)
        idle = last is not None and now_ms - last > keep_alive * 1000
        if keep_alive and idle and live.in_flight(placement.model.model_id, node_name) == 0:
            if _just_added_replica(placement):
                continue  # no thrash: a replica added under load stays MIN_RESIDENCY_SECONDS
            placements.placement_evict(node_name=node_name, model_id=placement.model.model_id)


def _just_added_replica(placement: Placement) -> bool:
    others = Placement.objects.filter(model=placement.model, state=Placement.State.READY)
    if not others.exclude(pk=placement.pk).exists() or placement.loaded_at is None:
        return False
    age = (timezone.now() - placement.loaded_at).total_seconds()
    return age < settings.MIN_RESIDENCY_SECONDS


@shared_task(ignore_result=True)
def schedule_node_ticks() -> None:
    """Beat runs this on the default queue: each node's tick runs on its own queue, and a node
    whose heartbeat stopped is taken out of routing until it beats again."""
    for node in Node.objects.filter(enabled=True):
        node_tick.apply_async(args=[node.name], queue=node.queue, expires=60)
    placements.withdraw_silent_nodes()


@worker_ready.connect
def _reconcile_on_start(**_kwargs) -> None:
    # A worker killed mid-load left a placement half done or an engine nobody accounts for.
    if settings.NODE_NAME and Node.objects.filter(name=settings.NODE_NAME).exists():
        placements.placement_reconcile(node_name=settings.NODE_NAME, restarted=True)
        placements.node_heartbeat(node_name=settings.NODE_NAME)
