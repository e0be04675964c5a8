"""ResourceManager: unit tests for each rule, then a stateful test against a reference model."""

import itertools
import threading
import time
import uuid
from dataclasses import FrozenInstanceError, dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from models_mgmt.resource_manager import (
    CapacityError,
    ModelDrainingError,
    ModelInfo,
    ModelNotLoadedError,
    ModelPinnedError,
    ModelTooLargeError,
    NoRequestInFlightError,
    ResourceManager,
    ResourceManagerError,
    choose_victims,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ids(manager: ResourceManager) -> list[str]:
    return [info.model_id for info in manager.loaded_models()]


def manager_with(*models: tuple[str, int], budget: int = 100, **kwargs) -> ResourceManager:
    """A manager with `models` loaded in order, so the first is the least recently used."""
    manager = ResourceManager(budget, **kwargs)
    for model_id, size in models:
        manager.load(model_id, size)
    return manager


def run_in_thread(target, *args, **kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def body():
        try:
            outcome["result"] = target(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - handed back to the test to assert on
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# --- Construction and basic accounting -----------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1])
def test_budget_must_be_positive(budget):
    with pytest.raises(ValueError, match="budget"):
        ResourceManager(budget)


@pytest.mark.parametrize("size", [0, -5])
def test_vram_must_be_positive(size):
    with pytest.raises(ValueError, match="vram_bytes"):
        ResourceManager(100).load("a", size)


def test_load_within_budget_counts_bytes():
    manager = manager_with(("a", 30), ("b", 50))
    assert manager.stats() == (80, 100, 2)
    assert ids(manager) == ["b", "a"]


def test_model_larger_than_budget_is_refused_without_side_effects():
    manager = manager_with(("a", 30))
    with pytest.raises(ModelTooLargeError):
        manager.load("huge", 101)
    assert manager.stats() == (30, 100, 1)
    manager.load("exact", 100)  # the whole budget is fine: "a" goes
    assert ids(manager) == ["exact"]


def test_reloading_touches_and_keeps_the_original_size():
    clock = FakeClock()
    manager = manager_with(("a", 30), ("b", 30), clock=clock)
    clock.now = 5
    assert manager.load("a", 70) == []
    assert manager.stats() == (60, 100, 2)
    first = manager.loaded_models()[0]
    assert (first.model_id, first.vram_bytes, first.loaded_at, first.last_used) == ("a", 30, 0, 5)


def test_touch_moves_to_front_and_records_time():
    clock = FakeClock()
    manager = manager_with(("a", 10), ("b", 10), ("c", 10), clock=clock)
    clock.now = 7
    manager.touch("a")
    assert ids(manager) == ["a", "c", "b"]
    assert manager.loaded_models()[0].last_used == 7


def test_unknown_models_raise_not_loaded():
    manager = ResourceManager(100)
    for call in (manager.evict, manager.touch, manager.begin_request, manager.end_request):
        with pytest.raises(ModelNotLoadedError):
            call("ghost")
    for call in (manager.pin, manager.unpin):
        with pytest.raises(ModelNotLoadedError):
            call("ghost")


def test_errors_share_a_base_class():
    for error in (ModelTooLargeError, ModelNotLoadedError, CapacityError, ModelDrainingError):
        assert issubclass(error, ResourceManagerError)
    assert issubclass(ModelPinnedError, ResourceManagerError)
    assert CapacityError("full").retry_after > 0


def test_model_info_is_a_frozen_snapshot():
    manager = manager_with(("a", 10))
    info = manager.loaded_models()[0]
    assert info == ModelInfo("a", 10, info.loaded_at, info.last_used, 0, False, "ready")
    with pytest.raises(FrozenInstanceError):
        info.in_flight = 3
    manager.begin_request("a")
    assert info.in_flight == 0


def test_end_request_without_one_in_flight_raises():
    manager = manager_with(("a", 10))
    with pytest.raises(NoRequestInFlightError):
        manager.end_request("a")


# --- Eviction and the callback -------------------------------------------------------------


def test_lru_eviction_calls_back_once_per_victim():
    manager = manager_with(("a", 40), ("b", 40), ("c", 20))
    evicted = []
    manager.set_evict_callback(evicted.append)
    manager.touch("a")
    assert manager.load("d", 60) == ["b", "c"]  # "a" was used more recently than both
    assert evicted == ["b", "c"]
    assert ids(manager) == ["d", "a"]
    assert manager.stats() == (100, 100, 2)


def test_explicit_evict_frees_bytes_and_calls_back():
    manager = manager_with(("a", 40), ("b", 40))
    evicted = []
    manager.set_evict_callback(evicted.append)
    assert manager.evict("a") is True
    assert evicted == ["a"]
    assert manager.stats() == (40, 100, 1)
    manager.set_evict_callback(None)
    manager.evict("b")
    assert evicted == ["a"]


def test_callback_can_reenter_the_manager_without_deadlock():
    manager = manager_with(("a", 60), ("b", 40), budget=110)
    seen = []

    def on_evict(model_id):
        # The state changed before the call, and no lock is held: all of these must work.
        seen.append((model_id, model_id in ids(manager), manager.stats()))
        if model_id == "a":
            manager.load("c", 10)

    manager.set_evict_callback(on_evict)
    thread, outcome = run_in_thread(manager.load, "big", 60)
    thread.join(5)
    assert not thread.is_alive(), "deadlocked"
    assert outcome == {"result": ["a"]}
    assert seen == [("a", False, (100, 110, 2))]
    assert ids(manager) == ["c", "big", "b"]


def test_a_failing_callback_does_not_break_the_manager(caplog):
    manager = manager_with(("a", 50), ("b", 50))
    calls = []

    def on_evict(model_id):
        calls.append(model_id)
        raise RuntimeError("boom")

    manager.set_evict_callback(on_evict)
    assert manager.load("c", 100) == ["a", "b"]
    assert calls == ["a", "b"]
    assert manager.stats() == (100, 100, 1)
    assert "evict callback failed" in caplog.text


# --- Victim selection ----------------------------------------------------------------------


def test_fewest_victims_beats_plain_lru_order():
    # LRU order would evict a and b (two victims); c alone is big enough.
    manager = manager_with(("a", 20), ("b", 20), ("c", 40))
    assert manager.load("d", 50) == ["c"]
    assert ids(manager) == ["d", "b", "a"]


def test_single_victim_is_the_least_recently_used_big_enough():
    manager = manager_with(("small", 5), ("x", 30), ("y", 30), ("z", 30))
    assert manager.load("new", 25) == ["x"]


def test_equal_count_prefers_victims_from_the_oldest_prefix():
    # Two victims are needed. {a, d} also frees 10 bytes but evicts d, the most recently used;
    # {b, c} keeps the victims within the three least recently used.
    manager = manager_with(("a", 1), ("b", 5), ("c", 5), ("d", 9), budget=20)
    assert manager.load("new", 10) == ["b", "c"]
    assert ids(manager) == ["new", "d", "a"]


def test_ties_on_the_newest_victim_go_to_the_older_second_victim():
    # Every two-victim set needs e (the only 6); {a, e} beats {b, e} as a is older.
    manager = manager_with(("a", 4), ("b", 4), ("c", 1), ("d", 1), ("e", 6), budget=16)
    assert manager.load("new", 10) == ["a", "e"]


def brute_force_victims(sizes: list[int], need: int) -> list[int] | None:
    for count in range(1, len(sizes) + 1):
        covers = [
            combo
            for combo in itertools.combinations(range(len(sizes)), count)
            if sum(sizes[i] for i in combo) >= need
        ]
        if covers:
            return list(min(covers, key=lambda combo: sorted(combo, reverse=True)))
    return None


@settings(max_examples=300)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=8), st.integers(1, 80))
def test_choose_victims_matches_brute_force(sizes, need):
    candidates = [(f"m{i}", size) for i, size in enumerate(sizes)]
    expected = brute_force_victims(sizes, need)
    if expected is None:
        with pytest.raises(ValueError, match="needed"):
            choose_victims(candidates, need)
    else:
        assert choose_victims(candidates, need) == [f"m{i}" for i in expected]


# --- Anti-thrash ---------------------------------------------------------------------------


def test_young_models_are_spared_while_older_ones_can_make_room():
    clock = FakeClock()
    manager = manager_with(("old", 40), clock=clock, min_residency_seconds=10)
    clock.now = 20
    manager.load("young", 40)
    manager.touch("old")  # "young" is now the least recently used...
    clock.now = 25
    assert manager.load("new", 40) == ["old"]  # ...but it is within its residency


def test_young_models_go_when_nothing_else_can_make_room():
    clock = FakeClock()
    manager = manager_with(("old", 20), clock=clock, min_residency_seconds=10)
    clock.now = 20
    manager.load("young", 60)
    clock.now = 25
    assert manager.load("new", 50) == ["young"]  # evicting "old" alone frees too little


def test_residency_expires():
    clock = FakeClock()
    manager = manager_with(("a", 50), ("b", 50), clock=clock, min_residency_seconds=10)
    manager.touch("a")
    clock.now = 10
    manager.load("c", 50)
    assert ids(manager) == ["c", "a"]  # b is the LRU and old enough again


@settings(max_examples=200)
@given(
    models=st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, 4)), min_size=1, max_size=6
    ),  # (size, seconds after the previous load)
    touches=st.lists(st.integers(0, 5), max_size=6),
    later=st.integers(0, 4),
    size=st.integers(1, 100),
)
def test_victims_follow_the_residency_and_fewest_rules(models, touches, later, size):
    clock = FakeClock()
    manager = ResourceManager(1000, min_residency_seconds=3, clock=clock)
    for index, (vram, gap) in enumerate(models):
        clock.now += gap
        manager.load(f"m{index}", vram)
    for index in touches:
        if index < len(models):
            manager.touch(f"m{index}")
    clock.now += later
    # Shrink the budget to what is used, by loading a filler nobody can evict.
    used, _, _ = manager.stats()
    manager.load("filler", 1000 - used, pin=True)
    snapshot = manager.loaded_models()[::-1]  # least recently used first
    pools = [
        [info for info in snapshot if not info.pinned and clock.now - info.loaded_at >= 3],
        [info for info in snapshot if not info.pinned],
    ]
    expected = None
    for pool in pools:
        chosen = brute_force_victims([info.vram_bytes for info in pool], size)
        if chosen is not None:
            expected = [pool[i].model_id for i in chosen]
            break
    if expected is None:
        with pytest.raises(CapacityError):
            manager.load("new", size)
    else:
        assert manager.load("new", size) == expected


# --- In-flight requests and draining -------------------------------------------------------


def test_busy_model_is_never_a_victim():
    manager = manager_with(("busy", 50), ("idle", 50))
    manager.begin_request("busy")
    manager.touch("idle")
    assert manager.load("new", 50) == ["idle"]
    manager.begin_request("new")
    with pytest.raises(CapacityError) as caught:
        manager.load("other", 50)
    assert caught.value.retry_after > 0
    assert ids(manager) == ["new", "busy"]


def test_evicting_a_busy_model_drains_it():
    manager = manager_with(("a", 60))
    evicted = []
    manager.set_evict_callback(evicted.append)
    manager.begin_request("a")
    manager.begin_request("a")
    assert manager.evict("a") is False
    assert manager.evict("a") is False  # evicting again changes nothing
    info = manager.loaded_models()[0]
    assert (info.state, info.in_flight) == ("draining", 2)
    assert manager.stats() == (60, 100, 1)  # the bytes are still in use
    for call in (manager.begin_request, manager.touch, manager.pin):
        with pytest.raises(ModelDrainingError):
            call("a")
    with pytest.raises(ModelDrainingError):
        manager.load("a", 60)
    with pytest.raises(CapacityError):
        manager.load("b", 50)  # a draining model is not a victim either
    manager.end_request("a")
    assert evicted == []
    manager.end_request("a")
    assert evicted == ["a"]
    assert manager.stats() == (0, 100, 0)


def test_drains_are_forced_only_after_the_timeout():
    clock = FakeClock()
    manager = manager_with(("a", 60), ("b", 10), clock=clock, drain_timeout_seconds=30)
    evicted = []
    manager.set_evict_callback(evicted.append)
    manager.begin_request("a")
    generation = manager.begin_request("b")
    clock.now = 5
    manager.evict("a")
    manager.evict("b")
    clock.now = 34.9
    assert manager.force_expired_drains() == []
    clock.now = 35
    assert manager.force_expired_drains() == ["a", "b"]
    assert evicted == ["a", "b"]
    assert manager.stats() == (0, 100, 0)
    # An abandoned request ending later: ignored with its generation, an error without it.
    manager.end_request("a", generation=generation - 1)
    with pytest.raises(ModelNotLoadedError):
        manager.end_request("a")
    # After a reload, the stale request must not release the new residency's request.
    manager.load("b", 10)
    manager.begin_request("b")
    manager.end_request("b", generation=generation)
    assert manager.loaded_models()[0].in_flight == 1


# --- Pinning -------------------------------------------------------------------------------


def test_pinned_models_are_never_evicted():
    manager = manager_with(("a", 50), ("b", 50))
    manager.pin("a")
    with pytest.raises(ModelPinnedError):
        manager.evict("a")
    assert manager.load("c", 50) == ["b"]
    with pytest.raises(CapacityError):
        manager.load("d", 60)
    manager.unpin("a")
    assert manager.load("d", 50) == ["a"]


def test_pin_at_load():
    manager = manager_with(("a", 40))
    manager.load("p", 50, pin=True)
    manager.load("a", 40, pin=True)  # already loaded: pinned in place
    assert [info.pinned for info in manager.loaded_models()] == [True, True]
    with pytest.raises(CapacityError):
        manager.load("q", 20, pin=True)  # would need to evict a pinned model
    assert manager.stats() == (90, 100, 2)


def test_pin_that_needs_busy_models_evicted_is_refused():
    manager = manager_with(("busy", 80))
    manager.begin_request("busy")
    with pytest.raises(CapacityError):
        manager.load("p", 30, pin=True)
    assert ids(manager) == ["busy"]


# --- Waiting loads -------------------------------------------------------------------------


def test_waiting_load_succeeds_when_a_request_ends():
    manager = manager_with(("busy", 80))
    manager.begin_request("busy")
    thread, outcome = run_in_thread(manager.load, "new", 50, wait_seconds=5)
    wait_until(lambda: manager.waiting == 1)
    manager.end_request("busy")
    thread.join(5)
    assert outcome == {"result": ["busy"]}
    assert manager.waiting == 0
    assert manager.stats() == (50, 100, 1)


@pytest.mark.parametrize("release", ["unpin", "drain"])
def test_waiting_load_wakes_on_unpin_and_drain(release):
    manager = manager_with(("a", 80))
    if release == "unpin":
        manager.pin("a")
    else:
        manager.begin_request("a")
        manager.evict("a")
    thread, outcome = run_in_thread(manager.load, "new", 50, wait_seconds=5)
    wait_until(lambda: manager.waiting == 1)
    if release == "unpin":
        manager.unpin("a")
    else:
        manager.end_request("a")
    thread.join(5)
    assert outcome == {"result": ["a"] if release == "unpin" else []}
    assert ids(manager) == ["new"]


def test_waiting_load_for_a_draining_model_reloads_it_after_the_drain():
    manager = manager_with(("a", 40))
    manager.begin_request("a")
    manager.evict("a")
    thread, outcome = run_in_thread(manager.load, "a", 40, wait_seconds=5)
    wait_until(lambda: manager.waiting == 1)
    manager.end_request("a")
    thread.join(5)
    assert outcome == {"result": []}
    assert manager.loaded_models()[0].state == "ready"


def test_waiting_load_times_out():
    manager = manager_with(("busy", 80))
    manager.begin_request("busy")
    started = time.monotonic()
    with pytest.raises(CapacityError):
        manager.load("new", 50, wait_seconds=0.1)
    assert 0.1 <= time.monotonic() - started < 2
    assert manager.waiting == 0


def test_waiters_are_bounded():
    manager = manager_with(("busy", 80), max_waiters=1)
    manager.begin_request("busy")
    thread, outcome = run_in_thread(manager.load, "first", 50, wait_seconds=5)
    wait_until(lambda: manager.waiting == 1)
    started = time.monotonic()
    with pytest.raises(CapacityError, match="waiting"):
        manager.load("second", 50, wait_seconds=5)
    assert time.monotonic() - started < 1  # refused at once, not after waiting
    manager.end_request("busy")
    thread.join(5)
    assert outcome == {"result": ["busy"]}


def test_no_waiters_allowed():
    manager = manager_with(("busy", 80), max_waiters=0)
    manager.begin_request("busy")
    with pytest.raises(CapacityError):
        manager.load("new", 50, wait_seconds=5)


def test_concurrent_use_keeps_the_books_straight():
    manager = ResourceManager(100)
    evicted = []
    manager.set_evict_callback(evicted.append)
    errors = []

    def worker(seed):
        for step in range(300):
            model_id = f"m{(seed * 7 + step) % 6}"
            try:
                manager.load(model_id, 20 + 10 * (step % 4))
                manager.begin_request(model_id)
                used, budget, _ = manager.stats()
                assert used <= budget
                manager.end_request(model_id)
            except (CapacityError, ModelNotLoadedError, ModelDrainingError):
                pass  # another thread got there first; the invariants are what matter
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    infos = manager.loaded_models()
    assert manager.stats()[0] == sum(info.vram_bytes for info in infos) <= 100
    assert all(info.in_flight == 0 for info in infos)


# --- Stateful test against a reference model -----------------------------------------------

BUDGET = 100
MIN_RESIDENCY = 3
DRAIN_TIMEOUT = 10
MODEL_IDS = [f"m{i}" for i in range(5)]
# Mostly sizes that share the budget, some that fill it or exceed it.
SIZES = st.one_of(st.integers(1, 45), st.sampled_from([100, 101]))
PIN_AT_LOAD = st.sampled_from([False, False, False, True])  # pins everywhere leave no victims


@dataclass
class RefModel:
    vram: int
    loaded_at: float
    last_used: float
    generation: int
    in_flight: int = 0
    pinned: bool = False
    drain_started: float | None = None


class Reference:
    """The rules written the obvious way: a list for recency, brute force for victims."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.models: dict[str, RefModel] = {}
        self.lru: list[str] = []  # least recently used first
        self.generation = 0
        self.unloaded: list[str] = []  # by the current operation

    @property
    def used(self) -> int:
        return sum(model.vram for model in self.models.values())

    def get(self, model_id: str, ready: bool = True) -> RefModel:
        if model_id not in self.models:
            raise ModelNotLoadedError
        if ready and self.models[model_id].drain_started is not None:
            raise ModelDrainingError
        return self.models[model_id]

    def touch(self, model_id: str) -> None:
        self.get(model_id).last_used = self.clock.now
        self.lru.remove(model_id)
        self.lru.append(model_id)

    def unload(self, model_id: str) -> None:
        del self.models[model_id]
        self.lru.remove(model_id)
        self.unloaded.append(model_id)

    def victims(self, need: int) -> list[str]:
        evictable = [
            model_id
            for model_id in self.lru
            if self.models[model_id].in_flight == 0 and not self.models[model_id].pinned
        ]
        settled = [
            model_id
            for model_id in evictable
            if self.clock.now - self.models[model_id].loaded_at >= MIN_RESIDENCY
        ]
        for pool in (settled, evictable):
            chosen = brute_force_victims([self.models[m].vram for m in pool], need)
            if chosen is not None:
                return [pool[i] for i in chosen]
        raise CapacityError("full")

    def load(self, model_id: str, vram: int, pin: bool) -> list[str]:
        if model_id in self.models:
            self.touch(model_id)
            self.models[model_id].pinned |= pin
            return []
        if vram > BUDGET:
            raise ModelTooLargeError
        need = self.used + vram - BUDGET
        victims = self.victims(need) if need > 0 else []
        for victim in victims:
            self.unload(victim)
        self.generation += 1
        now = self.clock.now
        self.models[model_id] = RefModel(vram, now, now, self.generation, pinned=pin)
        self.lru.append(model_id)
        return victims

    def evict(self, model_id: str) -> bool:
        model = self.get(model_id, ready=False)
        if model.pinned:
            raise ModelPinnedError
        if model.in_flight or model.drain_started is not None:
            if model.drain_started is None:
                model.drain_started = self.clock.now
            return False
        self.unload(model_id)
        return True

    def begin_request(self, model_id: str) -> int:
        self.touch(model_id)
        self.models[model_id].in_flight += 1
        return self.models[model_id].generation

    def end_request(self, model_id: str, generation: int | None) -> None:
        model = self.models.get(model_id)
        if generation is not None and (model is None or model.generation != generation):
            return
        model = self.get(model_id, ready=False)
        if model.in_flight == 0:
            raise NoRequestInFlightError
        model.in_flight -= 1
        if model.in_flight == 0 and model.drain_started is not None:
            self.unload(model_id)

    def pin(self, model_id: str, pinned: bool) -> None:
        self.get(model_id, ready=pinned).pinned = pinned

    def force_expired_drains(self) -> list[str]:
        for model_id in list(self.lru):
            started = self.models[model_id].drain_started
            if started is not None and self.clock.now - started >= DRAIN_TIMEOUT:
                self.unload(model_id)
        return list(self.unloaded)


def outcome(call):
    try:
        return call(), None
    except ResourceManagerError as exc:
        return None, type(exc)


class ResourceManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.manager = self.make_manager(
            BUDGET,
            min_residency_seconds=MIN_RESIDENCY,
            drain_timeout_seconds=DRAIN_TIMEOUT,
            clock=self.clock,
        )
        self.reference = Reference(self.clock)
        self.evicted: list[str] = []
        self.total_unloaded = 0
        self.requests: list[tuple[str, int]] = []  # (model_id, generation) begun, not ended
        self.manager.set_evict_callback(self.on_evict)

    def make_manager(self, budget: int, **options) -> ResourceManager:
        return ResourceManager(budget, **options)

    def on_evict(self, model_id: str) -> None:
        # Runs outside the lock after the state changed: re-entering must work and see it gone.
        assert model_id not in ids(self.manager)
        self.evicted.append(model_id)

    def step(self, kind: str, call_manager, call_reference):
        before = {info.model_id: info for info in self.manager.loaded_models()}
        self.evicted.clear()
        self.reference.unloaded.clear()
        expected = outcome(call_reference)
        actual = outcome(call_manager)
        assert actual == expected
        assert self.evicted == self.reference.unloaded
        self.total_unloaded += len(self.evicted)
        for model_id in self.evicted:
            info = before[model_id]
            assert not info.pinned
            if kind == "end_request":  # the last request of a drain ended
                assert (info.state, info.in_flight) == ("draining", 1)
            elif kind == "force":  # requests abandoned by policy
                assert info.state == "draining"
            else:
                assert (info.state, info.in_flight) == ("ready", 0)
        return actual[0]

    @initialize(
        sizes=st.lists(st.integers(1, 30), min_size=len(MODEL_IDS), max_size=len(MODEL_IDS))
    )
    def start_with_models(self, sizes):
        # Start with every model loaded, so that rules act on models more than they fail.
        for model_id, vram in zip(MODEL_IDS, sizes, strict=True):
            self.load(model_id, vram, False)
            self.clock.now += 1

    @rule(seconds=st.sampled_from([0, 1, 3, 10]))  # lands on the thresholds exactly
    def advance(self, seconds):
        self.clock.now += seconds

    @rule(model_id=st.sampled_from(MODEL_IDS), vram=SIZES, pin=PIN_AT_LOAD)
    def load(self, model_id, vram, pin):
        self.step(
            "load",
            lambda: self.manager.load(model_id, vram, pin=pin),
            lambda: self.reference.load(model_id, vram, pin),
        )

    @rule(model_id=st.sampled_from(MODEL_IDS))
    def touch(self, model_id):
        self.step(
            "touch", lambda: self.manager.touch(model_id), lambda: self.reference.touch(model_id)
        )

    @rule(model_id=st.sampled_from(MODEL_IDS))
    def evict(self, model_id):
        self.step(
            "evict", lambda: self.manager.evict(model_id), lambda: self.reference.evict(model_id)
        )

    @rule(model_id=st.sampled_from(MODEL_IDS))
    def begin_request(self, model_id):
        generation = self.step(
            "begin_request",
            lambda: self.manager.begin_request(model_id),
            lambda: self.reference.begin_request(model_id),
        )
        if generation is not None:
            self.requests.append((model_id, generation))

    @rule(model_id=st.sampled_from(MODEL_IDS))
    def evict_busy(self, model_id):
        # A request then an evict: the sequence that drains, too rare to leave to chance.
        self.begin_request(model_id)
        self.evict(model_id)

    @rule(model_id=st.sampled_from(MODEL_IDS))
    def end_request(self, model_id):
        self.step(
            "end_request",
            lambda: self.manager.end_request(model_id),
            lambda: self.reference.end_request(model_id, None),
        )

    @precondition(lambda self: self.requests)
    @rule(index=st.integers(0, 1000))
    def end_request_with_generation(self, index):
        model_id, generation = self.requests.pop(index % len(self.requests))
        self.step(
            "end_request",
            lambda: self.manager.end_request(model_id, generation=generation),
            lambda: self.reference.end_request(model_id, generation),
        )

    @rule(model_id=st.sampled_from(MODEL_IDS), pinned=st.booleans())
    def pin(self, model_id, pinned):
        call = self.manager.pin if pinned else self.manager.unpin
        self.step("pin", lambda: call(model_id), lambda: self.reference.pin(model_id, pinned))

    @rule()
    def force_expired_drains(self):
        self.step("force", self.manager.force_expired_drains, self.reference.force_expired_drains)

    @invariant()
    def matches_reference(self):
        infos = self.manager.loaded_models()
        used, budget, loaded = self.manager.stats()
        assert used <= budget == BUDGET
        assert used == sum(info.vram_bytes for info in infos) == self.reference.used
        assert loaded == len(infos)
        assert [info.model_id for info in infos] == self.reference.lru[::-1]
        last_used = [info.last_used for info in infos]
        assert last_used == sorted(last_used, reverse=True)
        for info in infos:
            ref = self.reference.models[info.model_id]
            state = "ready" if ref.drain_started is None else "draining"
            assert (info.vram_bytes, info.loaded_at, info.last_used) == (
                ref.vram,
                ref.loaded_at,
                ref.last_used,
            )
            assert (info.in_flight, info.pinned, info.state) == (ref.in_flight, ref.pinned, state)
        # One callback per unload: every model ever loaded and no longer resident.
        assert self.total_unloaded == self.reference.generation - len(self.reference.models)


TestResourceManagerStateful = ResourceManagerMachine.TestCase
TestResourceManagerStateful.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)


class SharedResourceManagerMachine(ResourceManagerMachine):
    """The same rules and invariants, with the manager's state in Redis."""

    def make_manager(self, budget: int, **options) -> ResourceManager:
        from django.conf import settings as django_settings

        from models_mgmt.shared_resource_manager import SharedResourceManager

        assert django_settings.REDIS_URL, "make test runs against a real Redis"
        return SharedResourceManager(budget, name=f"test-{uuid.uuid4().hex}",
                                     redis_url=django_settings.REDIS_URL, **options)  # fmt: skip


TestSharedResourceManagerStateful = SharedResourceManagerMachine.TestCase
TestSharedResourceManagerStateful.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None
)
