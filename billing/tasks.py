"""Thin Celery tasks over the billing services; idempotent, so a retry never doubles anything."""

from celery import shared_task
from django.conf import settings

from billing import alerts, credits, ledger, ledger_lag, spend, webhook_delivery, webhooks
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


@shared_task(acks_late=True, time_limit=600, ignore_result=True)
def lapse_expired_credits() -> int:
    return credits.credits_lapse_expired()


@shared_task(acks_late=True, time_limit=600, ignore_result=True)
def reconcile_credits() -> int:
    return credits.credits_reconcile()


# On the default queue, beside the drain: an attempt is bounded by WEBHOOK_TIMEOUT_SECONDS, and
# a worker on its own queue would be one more service to run.
@shared_task(acks_late=True, time_limit=120, ignore_result=True)
def deliver_webhook(delivery_id: int) -> None:
    delay = webhook_delivery.webhook_deliver(delivery_id=delivery_id)
    if delay is not None and not settings.CELERY_TASK_ALWAYS_EAGER:
        # Not in the embedded default (eager, no beat): retrying there would block the caller;
        # the delivery stays pending, shown in the portal, until a worker's sweep sends it.
        deliver_webhook.apply_async(args=[delivery_id], countdown=delay)


@shared_task(acks_late=True, time_limit=120, ignore_result=True)
def email_spend_alert(alert_id: int) -> None:
    alerts.alert_email_send(alert_id=alert_id)


@shared_task(time_limit=120, ignore_result=True, expires=50)
def sweep_events() -> None:
    """Send the deliveries and alert emails whose task was lost (a restart, a dropped
    message); what is sent twice by a race is claimed once by its service."""
    for delivery_id in webhook_delivery.webhooks_due():
        deliver_webhook.delay(delivery_id)
    for alert_id in alerts.alerts_unemailed():
        email_spend_alert.delay(alert_id)


@shared_task(time_limit=600, ignore_result=True)
def notify_expiring_keys() -> int:
    return webhooks.apikeys_expiring_notify()
