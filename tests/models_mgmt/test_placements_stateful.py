"""The node's decisions on the shared (Redis) state, driven by random sequences of loads,
requests, evictions and pins: used bytes never exceed the budget, no model with requests in
flight and no pinned model is ever evicted, a load evicts only when it must, and it is refused
only when no set of idle, unpinned models could make room."""

import asyncio

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from models_mgmt import placements
from models_mgmt.live import live_state
from models_mgmt.models import Node, Placement, ServedModel
from models_mgmt.services import model_register, model_set_pinned

BUDGET = 100
MODELS = [f"m{i}" for i in range(3)]


def held() -> dict[str, int]:
    rows = Placement.objects.filter(state=Placement.State.READY)
    return dict(rows.values_list("model__model_id", "vram_bytes"))


class NodeDecisions(RuleBasedStateMachine):
    upstream = ""

    @initialize(sizes=st.lists(st.integers(35, 70), min_size=3, max_size=3))
    def setup(self, sizes):
        Placement.objects.all().delete()
        ServedModel.objects.all().delete()
        Node.objects.all().delete()
        live_state().client.flushdb()
        placements.node_add(name="n1", vram_bytes=BUDGET)
        self.sizes = dict(zip(MODELS, sizes, strict=True))
        for model_id, size in self.sizes.items():
            model_register(model_id=model_id, engine="openai", base_url=self.upstream,
                           vram_bytes=size)  # fmt: skip
        self.in_flight = dict.fromkeys(MODELS, 0)
        self.pinned: set[str] = set()

    @rule(model_id=st.sampled_from(MODELS))
    def load(self, model_id):
        before = held()
        protected = {m for m in before if self.in_flight[m] or m in self.pinned}
        evictable = sum(size for m, size in before.items() if m not in protected)
        free = BUDGET - sum(before.values())
        try:
            placements.placement_load(node_name="n1", model_id=model_id)
        except placements.PlacementError:
            assert model_id not in before
            assert free + evictable < self.sizes[model_id]  # refused only when it had to be
            return
        after = held()
        assert model_id in after
        evicted = set(before) - set(after)
        assert not evicted & protected  # busy and pinned models stay
        if model_id in before or free >= self.sizes[model_id]:
            assert not evicted  # no eviction that was not needed

    @rule(model_id=st.sampled_from(MODELS))
    def request(self, model_id):
        route = asyncio.run(live_state().route(model_id))
        assert (route is not None) == (model_id in held())
        if route is not None:
            self.in_flight[model_id] += 1

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(data=st.data())
    def finish(self, data):
        model_id = data.draw(st.sampled_from([m for m, n in self.in_flight.items() if n]))
        asyncio.run(live_state().finished(model_id, "n1"))
        self.in_flight[model_id] -= 1

    @rule(model_id=st.sampled_from(MODELS))
    def evict(self, model_id):
        if self.in_flight[model_id] or model_id in self.pinned:
            return  # an evict would wait for the drain, or is refused for a pinned model
        placements.placement_evict(node_name="n1", model_id=model_id)
        assert model_id not in held()

    @rule(model_id=st.sampled_from(MODELS), pin=st.booleans())
    def set_pin(self, model_id, pin):
        model_set_pinned(model=ServedModel.objects.get(model_id=model_id), pinned=pin)
        (self.pinned.add if pin else self.pinned.discard)(model_id)

    @invariant()
    def within_budget_and_routes_match(self):
        if not hasattr(self, "sizes"):
            return
        placed = held()
        assert sum(placed.values()) <= BUDGET
        routed = {m for m in MODELS if live_state().endpoints(m)}
        assert routed == set(placed)


@pytest.mark.django_db(transaction=True)
def test_node_decisions_keep_their_invariants(fake_upstream_url, settings_override):
    NodeDecisions.upstream = fake_upstream_url
    NodeDecisions.TestCase.settings = settings(
        max_examples=15, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )  # fmt: skip
    NodeDecisions.TestCase().runTest()


@pytest.fixture
def settings_override(settings):
    settings.MIN_RESIDENCY_SECONDS = 0
    settings.DRAIN_TIMEOUT_SECONDS = 0
