"""Recording state changes, and pruning them past retention: the only writers of the audit log.

Services of every app call `audit_record` once per action, inside their own transaction, so a
change and its row commit or roll back together. Who acted comes from saas_platform/actors.py.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from audit.models import AuditEvent
from saas_platform import actors

# Words of field names that may hold a secret (`password`, `key_digest`): refused in `changes`,
# so no caller can log one by mistake.
SECRET_WORDS = ("password", "digest", "secret", "token", "plaintext")


def _tenant_of(obj: Model | None):
    if obj is None:
        return None
    if obj._meta.label_lower == "tenants.tenant":
        return obj
    return getattr(obj, "tenant", None) if hasattr(obj, "tenant_id") else None


def audit_record(
    *,
    action: str,
    obj: Model | None = None,
    changes: dict[str, tuple] | None = None,
    tenant=None,
    object_repr: str = "",
    actor: actors.Actor | None = None,
) -> AuditEvent:
    """Record one action (`tenant.suspended`, `apikey.created`, ...) on `obj`, with the changed
    fields as {field: (before, after)}. The tenant is `obj`'s (or `obj` itself) unless given;
    the actor is the current one (the request's user, `cli`, `system`) unless given."""
    changes = changes or {}
    for field in changes:
        if set(field.lower().split("_")) & set(SECRET_WORDS):
            raise ValueError(f"{field!r} may hold a secret: it is never written to the audit log")
    actor = actor or actors.current()
    tenant = tenant if tenant is not None else _tenant_of(obj)
    return AuditEvent.objects.create(
        actor_kind=actor.kind,
        actor_name=actor.name[:200],
        actor_user_id=actor.user_id,
        os_user=actor.os_user[:100],
        address=actor.address or None,
        user_agent=actor.user_agent,
        tenant_id=tenant.pk if tenant is not None else None,
        tenant_slug=str(tenant) if tenant is not None else "",
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=(object_repr or (str(obj) if obj is not None else ""))[:200],
        changes={field: list(pair) for field, pair in changes.items()},
    )


def changed(before: dict, after: dict) -> dict[str, tuple]:
    """{field: (before, after)} for the fields whose value differs."""
    return {f: (before.get(f), after.get(f)) for f in after if before.get(f) != after.get(f)}


def field_values(obj: Model, fields) -> dict:
    return {field: getattr(obj, field) for field in fields}


@transaction.atomic
def audit_prune(*, now: datetime | None = None) -> int:
    """Delete rows older than AUDIT_RETENTION_DAYS: the one delete the database allows, for
    rows before the cutoff this transaction names, and only in this transaction."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.AUDIT_RETENTION_DAYS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT set_config('audit.prune_before', %s, true)", [cutoff.isoformat()]
            )
        else:  # SQLite: the permit is a row in a table of its own (no session settings)
            stored = connection.ops.adapt_datetimefield_value(cutoff)
            cursor.execute("INSERT INTO audit_prune_permit (before) VALUES (%s)", [stored])
        deleted, _ = AuditEvent.objects.filter(created_at__lt=cutoff).delete()
        if connection.vendor != "postgresql":
            cursor.execute("DELETE FROM audit_prune_permit")
    if deleted:
        audit_record(
            action="audit.pruned",
            changes={"rows": (None, deleted)},
            object_repr=f"before {cutoff:%Y-%m-%d}",
        )
    return deleted
