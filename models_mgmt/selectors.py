import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce

from models_mgmt.models import MEMORY_HOLDING_STATES, Node, ServedModel
from saas_platform.threads import in_db_thread

logger = logging.getLogger(__name__)


def enabled_models():
    return ServedModel.objects.filter(enabled=True)


def enabled_model_ids() -> list[str]:
    return list(enabled_models().values_list("model_id", flat=True))


def enabled_model(model_id: str) -> ServedModel | None:
    return enabled_models().filter(model_id=model_id).first()


@dataclass(frozen=True)
class NodeMemory:
    node: str
    used_bytes: int  # declared bytes of the models that hold memory there
    budget_bytes: int


def node_memory() -> list[NodeMemory]:
    """Each node's memory used against its budget, in one query."""
    holding = Q(placements__state__in=MEMORY_HOLDING_STATES)
    rows = Node.objects.annotate(
        used=Coalesce(Sum("placements__vram_bytes", filter=holding), 0)
    ).values_list("name", "used", "vram_budget_bytes")
    return [NodeMemory(name, used, budget) for name, used, budget in rows]


def unknown_model_ids(model_ids) -> set[str]:
    """The ids among `model_ids` that the catalog does not have (enabled or not)."""
    known = set(
        ServedModel.objects.filter(model_id__in=model_ids).values_list("model_id", flat=True)
    )
    return set(model_ids) - known


class _CatalogCache:
    """The enabled models, kept per process for a few seconds: the gateway looks a model up on
    every request and must not query the database each time."""

    def __init__(self):
        self.models: dict[str, ServedModel] = {}
        self.loaded_at = float("-inf")

    def fresh(self) -> bool:
        return time.monotonic() - self.loaded_at <= settings.CATALOG_CACHE_SECONDS

    def get(self) -> dict[str, ServedModel]:
        if not self.fresh():
            try:
                self.models = {model.model_id: model for model in enabled_models()}
            except DatabaseError:
                if self.loaded_at == float("-inf"):
                    raise
                # Serve the catalog we have through a database outage; retry next time.
                logger.warning("model catalog unavailable; serving the cached one")
                return self.models
            self.loaded_at = time.monotonic()
        return self.models


_catalog = _CatalogCache()
_catalog_lookup = in_db_thread(_catalog.get)


async def acatalog() -> dict[str, ServedModel]:
    """The enabled models by id, at most CATALOG_CACHE_SECONDS old. Only a reload goes to the
    thread pool: a fresh catalog is answered on the event loop, with no thread hop."""
    if _catalog.fresh():
        return _catalog.models
    return await _catalog_lookup()
