"""Node decisions in process: loads, capacity refusals that never touch a busy model, and
silent nodes taken out of routing."""

import asyncio
from datetime import timedelta

import pytest
from django.utils import timezone

from models_mgmt import placements
from models_mgmt.live import live_state
from models_mgmt.models import Node, Placement
from models_mgmt.services import model_register
from tests.metrics import scrape, value


@pytest.fixture
def node(transactional_db):
    return placements.node_add(name="n1", vram_bytes=100)


def register(fake_upstream_url, model_id, vram_bytes):
    return model_register(model_id=model_id, engine="openai", base_url=fake_upstream_url,
                          vram_bytes=vram_bytes)  # fmt: skip


def test_a_load_publishes_the_model_for_routing_and_is_idempotent(node, fake_upstream_url):
    register(fake_upstream_url, "a", 60)

    first = placements.placement_load(node_name="n1", model_id="a")
    again = placements.placement_load(node_name="n1", model_id="a")

    assert first.pk == again.pk
    assert first.state == Placement.State.READY
    assert live_state().endpoints("a") == {"n1": fake_upstream_url}


def test_a_load_that_needs_a_busy_models_room_fails_and_leaves_it_serving(node, fake_upstream_url):
    register(fake_upstream_url, "busy", 80)
    register(fake_upstream_url, "newcomer", 50)
    placements.placement_load(node_name="n1", model_id="busy")
    asyncio.run(live_state().route("busy"))  # a request in flight on it

    with pytest.raises(placements.PlacementError):
        placements.placement_load(node_name="n1", model_id="newcomer")

    states = dict(Placement.objects.values_list("model__model_id", "state"))
    assert states == {"busy": Placement.State.READY, "newcomer": Placement.State.FAILED}
    assert "no room on n1" in Placement.objects.get(model__model_id="newcomer").failure
    assert live_state().endpoints("busy") == {"n1": fake_upstream_url}


def test_an_idle_model_is_evicted_least_recently_used_first(node, fake_upstream_url):
    for model_id in ("old", "recent"):
        register(fake_upstream_url, model_id, 40)
        placements.placement_load(node_name="n1", model_id=model_id)
    asyncio.run(live_state().route("recent"))
    asyncio.run(live_state().finished("recent", "n1"))
    register(fake_upstream_url, "third", 40)

    placements.placement_load(node_name="n1", model_id="third")

    assert set(Placement.objects.values_list("model__model_id", flat=True)) == {"recent", "third"}
    assert live_state().endpoints("old") == {}


def test_a_silent_node_leaves_routing_until_it_beats_again(node, fake_upstream_url):
    register(fake_upstream_url, "a", 10)
    placements.placement_load(node_name="n1", model_id="a")
    Node.objects.update(last_heartbeat=timezone.now() - timedelta(minutes=10))

    assert placements.withdraw_silent_nodes() == ["n1"]
    assert asyncio.run(live_state().route("a")) is None

    placements.node_heartbeat(node_name="n1")
    assert asyncio.run(live_state().route("a")) == ("n1", fake_upstream_url)


def test_any_servers_metrics_show_the_nodes_memory_loads_and_evictions(
    node, fake_upstream_url, gateway
):
    before = scrape(gateway.url)  # another process: counts and figures come through Redis and
    for model_id in ("old", "recent", "third"):  # the database, not its memory
        register(fake_upstream_url, model_id, 40)
        placements.placement_load(node_name="n1", model_id=model_id)
    after = scrape(gateway.url)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "models_node_used_bytes", node="n1") == 80
    assert value(after, "models_node_budget_bytes", node="n1") == 100
    assert added("models_loads_total", node="n1") == 3
    assert added("models_evictions_total", node="n1", reason="lru") == 1
