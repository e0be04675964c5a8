from django.db import models
from django.utils import timezone

from tenants.quotas import MODEL_ID_MAX_LENGTH


class ServedModel(models.Model):
    """A model in the catalog: the public id tenants ask for, and the engine that serves it.

    The model-management issue adds nodes and placements; for now a model has one engine.
    """

    class Engine(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible server"
        LOCAL = "local", "Built-in local engine"

    class Task(models.TextChoices):
        CHAT = "chat", "Chat and completions"
        EMBEDDINGS = "embeddings", "Embeddings"

    model_id = models.CharField(max_length=MODEL_ID_MAX_LENGTH, unique=True)
    engine = models.CharField(max_length=16, choices=Engine.choices)
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.CHAT)
    base_url = models.URLField(
        max_length=500, blank=True, help_text="The engine's OpenAI-compatible base URL (…/v1)."
    )
    upstream_model = models.CharField(
        max_length=500,
        blank=True,
        help_text="The engine's name for the model; for the local engine a bundled model "
        "name or a GGUF file path.",
    )
    vram_bytes = models.PositiveBigIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["model_id"]

    def __str__(self) -> str:
        return self.model_id

    @property
    def engine_model_name(self) -> str:
        return self.upstream_model or self.model_id
