"""Nodes and placements in the admin: each node's memory as a bar of used against budget bytes
and its models' states; load, evict and pin from the node's page through the node tasks (run
in process here: no broker; tests/admin_ui/test_browser.py runs a real node worker)."""

import re

import pytest
from django.utils import timezone

from models_mgmt.models import Node, Placement
from models_mgmt.placements import node_add
from models_mgmt.services import model_register


@pytest.fixture
def node(db):
    node = node_add(name="gpu-1", vram_bytes=1000)
    Node.objects.filter(pk=node.pk).update(last_heartbeat=timezone.now())
    return node


@pytest.fixture
def small(db):
    return model_register(model_id="small", engine="local", vram_bytes=400)


def test_nodes_list_shows_memory_bars_and_model_states(admin_client, node, small):
    other = model_register(model_id="other", engine="local", vram_bytes=350)
    Placement.objects.create(node=node, model=small, state="ready", vram_bytes=400)
    Placement.objects.create(node=node, model=other, state="failed", vram_bytes=350)
    node_add(name="gpu-2", vram_bytes=500)

    page = admin_client.get("/admin/models_mgmt/node/").content.decode()

    assert 'aria-valuenow="400"' in page  # a failed placement holds no memory
    assert "400 B of 1.0 KB (40%)" in page
    assert "0 B of 500 B (0%)" in page
    assert re.search(r"small\s*<span class=\"admin-badge admin-badge-ready\">Ready", page)
    assert re.search(r"other\s*<span class=\"admin-badge admin-badge-failed\">Failed", page)


def test_nodes_list_costs_the_same_queries_for_many_nodes(
    admin_client, small, django_assert_max_num_queries
):
    models = [model_register(model_id=f"m{n}", engine="local", vram_bytes=1) for n in range(5)]
    for n in range(15):
        node = node_add(name=f"n{n}", vram_bytes=100)
        for model in models:
            Placement.objects.create(node=node, model=model, state="ready", vram_bytes=1)

    with django_assert_max_num_queries(7):
        response = admin_client.get("/admin/models_mgmt/node/")

    assert response.content.decode().count("admin-badge-ready") == 75


def test_load_evict_and_pin_from_the_node_page(admin_client, node, small):
    page = admin_client.get(f"/admin/models_mgmt/node/{node.pk}/change/").content.decode()
    assert f'<option value="{small.pk}">small' in page

    loaded = admin_client.post(
        f"/admin/models_mgmt/node/{node.pk}/load/", {"model": small.pk}, follow=True
    )

    placement = Placement.objects.get(node=node, model=small)
    assert placement.state == Placement.State.READY
    html = loaded.content.decode()
    assert "Load of small queued on gpu-1." in html
    assert 'data-state="ready"' in html
    assert 'hx-trigger="every 2s"' in html  # it keeps watching for a while after an action

    admin_client.post(f"/admin/models_mgmt/node/{node.pk}/placements/{placement.pk}/pin/")
    refused = admin_client.post(
        f"/admin/models_mgmt/node/{node.pk}/placements/{placement.pk}/evict/", follow=True
    )

    assert "small is pinned on gpu-1; unpin it first" in refused.content.decode()
    assert Placement.objects.filter(pk=placement.pk, pinned=True).exists()

    admin_client.post(f"/admin/models_mgmt/node/{node.pk}/placements/{placement.pk}/unpin/")
    evicted = admin_client.post(
        f"/admin/models_mgmt/node/{node.pk}/placements/{placement.pk}/evict/", follow=True
    )

    assert "Evict of small queued on gpu-1." in evicted.content.decode()
    assert not Placement.objects.filter(pk=placement.pk).exists()
    assert "No models on this node." in evicted.content.decode()


def test_a_load_that_cannot_fit_shows_why(admin_client, node):
    huge = model_register(model_id="huge", engine="local", vram_bytes=5000)

    response = admin_client.post(
        f"/admin/models_mgmt/node/{node.pk}/load/", {"model": huge.pk}, follow=True
    )

    assert "No capacity for huge on gpu-1." in response.content.decode()
    assert Placement.objects.get(model=huge).state == Placement.State.FAILED
    assert "Retry load of huge" in response.content.decode()


def test_the_placements_fragment_stops_polling_once_settled(admin_client, node, small):
    Placement.objects.create(node=node, model=small, state="loading", vram_bytes=400)
    url = f"/admin/models_mgmt/node/{node.pk}/placements/"

    loading = admin_client.get(url).content.decode()
    Placement.objects.filter(model=small).update(state="ready")
    settled = admin_client.get(f"{url}?watch=0").content.decode()
    watching = admin_client.get(f"{url}?watch=3").content.decode()

    assert 'hx-trigger="every 2s"' in loading
    assert "<html" not in loading  # a fragment, not a page
    assert 'hx-trigger="every 2s"' not in settled
    assert f'hx-get="{url}?watch=2"' in watching
