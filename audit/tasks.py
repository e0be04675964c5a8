"""The audit log's one task: pruning past retention (beat runs it hourly; idempotent)."""

from celery import shared_task

from audit.services import audit_prune


@shared_task(acks_late=True, time_limit=300, ignore_result=True)
def prune_audit_log() -> int:
    return audit_prune()
