from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One state change: who, what, when and from where. Append-only, enforced by the database
    (audit/migrations/0001_initial.py): UPDATE is refused, and DELETE too except for rows past
    retention inside `audit_prune`.

    No foreign keys: deleting a user or a tenant must neither touch these rows (the trigger
    would refuse it) nor lose whose they were, so ids and names are copied."""

    class ActorKind(models.TextChoices):
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        ANONYMOUS = "anonymous", "Anonymous"
        CLI = "cli", "Command line"
        SYSTEM = "system", "System"

    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_name = models.CharField(max_length=200)
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    os_user = models.CharField("OS user", max_length=100, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    tenant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    tenant_slug = models.CharField("tenant", max_length=63, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField("object", max_length=200, blank=True)
    # {field: [before, after]}; never a secret, digest or password (audit_record refuses them).
    changes = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant_id", "-created_at"], name="audit_tenant_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action}"
