"""The fair queue in the admin: a model's capacity and its queue (waiting now, mean wait) on the
model list and change page and on the node page of a node it is placed on, read from the
same Redis queue the gateways use."""

import asyncio

import pytest
from django.conf import settings

from gateway.fair_queue_backends import Capacity, RedisFairQueue
from models_mgmt.models import Placement
from models_mgmt.placements import node_add
from models_mgmt.services import model_register
from tests.redis_cluster import flush

ONE = Capacity(per_replica=1, replicated=False)


@pytest.fixture
def busy_model(db):
    flush(settings.REDIS_URL)
    model = model_register(model_id="busy", engine="local", max_concurrent_per_replica=1)

    async def fill():
        queue = RedisFairQueue(settings.REDIS_URL)
        for waiter in ("holder", "w1", "w2"):
            await queue.enter("busy", waiter, tenant_id=7, weight=1, priority="normal",
                              max_queued=10, capacity=ONE, lease_ms=60_000)  # fmt: skip
        await queue.release("busy", "holder", capacity=ONE, lease_ms=60_000)  # w1 is served
        await queue.client.aclose()

    asyncio.run(fill())
    return model


def test_model_pages_show_capacity_and_queue(admin_client, busy_model):
    model_register(model_id="free", engine="local")

    listing = admin_client.get("/admin/models_mgmt/servedmodel/").content.decode()
    change = admin_client.get(
        f"/admin/models_mgmt/servedmodel/{busy_model.pk}/change/"
    ).content.decode()

    assert "1 per replica" in listing
    assert "unlimited" in listing  # the model without a capacity
    assert "1 waiting · mean wait" in listing
    assert "of 2</td>" in listing  # holder and w1 went through the queue
    assert "1 waiting · mean wait" in change


def test_node_page_shows_the_queue_of_its_models(admin_client, busy_model):
    node = node_add(name="gpu-q", vram_bytes=1000)
    Placement.objects.create(node=node, model=busy_model, state="ready")

    page = admin_client.get(f"/admin/models_mgmt/node/{node.pk}/change/").content.decode()

    assert "Queue (waiting now, mean wait)" in page
    assert "1 waiting · mean wait" in page
