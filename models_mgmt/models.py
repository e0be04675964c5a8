import re

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from models_mgmt.engine_urls import validate_engine_base_url
from saas_platform.model_ids import MODEL_ID_CHARACTERS, MODEL_ID_MAX_LENGTH, validate_model_id

FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ServedModel(models.Model):
    """A model in the catalog: the public id tenants ask for, and the engine that serves it.

    `openai` and `local` models are served where they already run. A `process` model is loaded
    onto a node by that node's worker, which starts an engine server from the command template
    in `engine_settings` (e.g. llama.cpp's server); the gateway routes to its placements.
    """

    class Engine(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible server"
        LOCAL = "local", "Built-in local engine"
        PROCESS = "process", "Engine process started on a node"

    class Task(models.TextChoices):
        CHAT = "chat", "Chat and completions"
        EMBEDDINGS = "embeddings", "Embeddings"

    model_id = models.CharField(
        max_length=MODEL_ID_MAX_LENGTH,
        unique=True,
        validators=[validate_model_id],
        help_text=f"What clients send as model: {MODEL_ID_CHARACTERS}.",
    )
    engine = models.CharField(max_length=16, choices=Engine.choices)
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.CHAT)
    # Not a URLField: Django's URL rule refuses single-label hosts (http://gpu-1:8000/v1) and
    # allows credentials and fragments; engine_urls has the rule for where requests may go.
    base_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_engine_base_url],
        help_text="The engine's OpenAI-compatible base URL (…/v1): http or https, a host, no "
        "credentials, query or fragment.",
    )
    upstream_model = models.CharField(
        max_length=500,
        blank=True,
        help_text="The engine's name for the model; for the local engine a bundled model "
        "name or a GGUF file path.",
    )
    vram_bytes = models.PositiveBigIntegerField(default=0)
    engine_settings = models.JSONField(
        default=dict, blank=True,
        help_text="For process engines: {\"command\": template with {python} {path} {port} "
        "{host}, \"path\": the weights}.",
    )  # fmt: skip
    # What tenants may send beyond OpenAI's fields (gateway.parsing): engine options such as
    # top_k. Staff's choice, since engine-specific fields can defeat the token reservation.
    extra_fields = models.JSONField(
        default=list, blank=True,
        help_text="Request fields forwarded to this engine besides OpenAI's (e.g. [\"top_k\"]).",
    )  # fmt: skip
    allow_images = models.BooleanField(
        default=False,
        help_text="Accept image_url message parts (data: URLs, or https URLs of public hosts).",
    )
    pinned = models.BooleanField(default=False, help_text="Never evicted once loaded.")
    keep_alive_seconds = models.PositiveIntegerField(
        default=900, help_text="Unloaded after this long without requests (0: never)."
    )
    # What one replica's engine serves well at once (vLLM's max_num_seqs, llama.cpp's
    # --parallel): past it, requests wait in the gateway's fair queue instead of in the engine.
    max_concurrent_per_replica = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests one replica (or the endpoint) serves at once; past it requests wait "
        "in the fair queue. Empty: unlimited.",
    )
    max_replicas = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Ready replicas of a process model at most: more are loaded on other nodes "
        "while its queue holds waiters for SCALE_OUT_AFTER_SECONDS.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["model_id"]

    def __str__(self) -> str:
        return self.model_id

    def clean(self) -> None:
        """The catalog entry's one validation: `manage.py models register` (full_clean in
        model_register) and the admin's form both run it, so both refuse with one message."""
        super().clean()
        errors = {}
        names = self.extra_fields
        if not isinstance(names, list) or not all(
            isinstance(name, str) and FIELD_NAME.fullmatch(name) for name in names
        ):
            errors["extra_fields"] = (
                'A list of field names (letters, digits and _), e.g. ["top_k"].'
            )
        if self.engine == self.Engine.OPENAI and not self.base_url:
            errors["base_url"] = "The openai engine needs the server's base URL."
        settings_ = self.engine_settings
        if not isinstance(settings_, dict):
            errors["engine_settings"] = 'Engine settings must be an object, e.g. {"command": …}.'
        elif self.engine == self.Engine.PROCESS and "{port}" not in str(
            settings_.get("command") or ""
        ):
            errors["engine_settings"] = (
                "The process engine needs --command with a {port} placeholder."
            )
        if isinstance(self.vram_bytes, int) and self.vram_bytes < 0:
            errors["vram_bytes"] = "VRAM bytes cannot be negative."
        if errors:
            raise ValidationError(errors)

    @property
    def engine_model_name(self) -> str:
        return self.upstream_model or self.model_id


class Node(models.Model):
    """A GPU node: its worker consumes the Celery queue `node.<name>` and owns its engines."""

    name = models.SlugField(max_length=63, unique=True)
    vram_budget_bytes = models.PositiveBigIntegerField()
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The node's one validation, run by `manage.py nodes add` (full_clean in node_add) and
        by the admin's form."""
        super().clean()
        budget = self.vram_budget_bytes
        if isinstance(budget, int) and budget < 1:
            raise ValidationError({"vram_budget_bytes": "VRAM budget must be at least 1 byte."})

    @property
    def queue(self) -> str:
        return f"node.{self.name}"


class Placement(models.Model):
    """A model on a node, from the request to load it until it is unloaded (then the row goes;
    a failed one stays, with its reason, until the next attempt)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        LOADING = "loading", "Loading"
        READY = "ready", "Ready"
        DRAINING = "draining", "Draining"
        UNLOADING = "unloading", "Unloading"
        FAILED = "failed", "Failed"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="placements")
    model = models.ForeignKey(ServedModel, on_delete=models.CASCADE, related_name="placements")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    endpoint_url = models.URLField(max_length=500, blank=True)
    vram_bytes = models.PositiveBigIntegerField(default=0)
    pinned = models.BooleanField(default=False)
    failure = models.TextField(blank=True)
    # What the engine really holds (GPU memory, or resident memory without a GPU), from the
    # node's last tick: compare with vram_bytes, which is declared.
    measured_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    measured_source = models.CharField(max_length=16, blank=True)
    loaded_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["node__name", "model__model_id"]
        constraints = [
            models.UniqueConstraint(fields=["node", "model"], name="placement_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model} on {self.node} ({self.state})"

    @property
    def holds_memory(self) -> bool:
        return self.state in MEMORY_HOLDING_STATES


# The states in which a placement's engine holds (or is taking) its node's memory.
MEMORY_HOLDING_STATES = frozenset(
    {
        Placement.State.LOADING,
        Placement.State.READY,
        Placement.State.DRAINING,
        Placement.State.UNLOADING,
    }
)
