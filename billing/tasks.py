"""Thin Celery tasks over the billing services; idempotent, so a retry never doubles anything."""

from celery import shared_task
from django.conf import settings

from billing import ledger, ledger_lag, spend
from billing.invoices import invoices_close_due


@shared_task(acks_late=True, time_limit=120, ignore_result=True)
def drain_usage_events() -> int:
    if not settings.REDIS_URL:
        return 0  # without Redis the ledger recorder stores events directly
    return ledger.ledger_drain()


@shared_task(acks_late=True, time_limit=600, ignore_result=True)
def reconcile_spend() -> None:
    spend.spend_reconcile()


@shared_task(acks_late=True, time_limit=3600, ignore_result=True)
def close_due_invoices() -> int:
    result = invoices_close_due()
    return len(result.finalized) if result else 0


@shared_task(time_limit=60, ignore_result=True, expires=30)
def watch_ledger_lag() -> None:
    ledger_lag.ledger_lag_check()
