"""The models a tenant may use: `/v1/models`, `/v1/models/{id}`, and the lookup every inference
request makes (from the per-process catalog cache, on the event loop)."""

from models_mgmt.models import ServedModel
from models_mgmt.selectors import acatalog
from tenants.services import Authenticated


def _allowed(caller: Authenticated, model_id: str) -> bool:
    """The tenant's allow list, narrowed by the key's own."""
    return caller.tenant.config.model_allowed(model_id) and caller.api_key.limits.model_allowed(
        model_id
    )


async def allowed_models(caller: Authenticated) -> list[ServedModel]:
    catalog = await acatalog()
    return sorted((m for model_id, m in catalog.items() if _allowed(caller, model_id)), key=str)


async def allowed_model(caller: Authenticated, model_id: str) -> ServedModel | None:
    """One model, if enabled and the caller may use it: a lookup, not a filtered catalog copy
    on every request."""
    model = (await acatalog()).get(model_id)
    return model if model is not None and _allowed(caller, model_id) else None


def model_object(model: ServedModel) -> dict:
    return {
        "id": model.model_id,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": "saas-platform",
    }


def model_list(models: list[ServedModel]) -> dict:
    return {"object": "list", "data": [model_object(m) for m in models]}
