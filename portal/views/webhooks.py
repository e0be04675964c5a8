"""The tenant's webhook endpoint, for its owners: add, change or remove it, choose its events,
roll its secret, send a test event, and see recent deliveries with their attempts. A secret is
shown once, in the response to the request that made it, with caching turned off."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from billing import alerts, webhooks
from billing.models import WebhookAttempt, WebhookEndpoint
from portal.access import member_required
from portal.forms import AlertThresholdsForm, WebhookForm

RECENT_DELIVERIES = 20


def _endpoint(request) -> WebhookEndpoint | None:
    return WebhookEndpoint.objects.filter(tenant=request.tenant).first()


def _page(request, form=None, *, secret: str | None = None, status: int = 200,
          thresholds_form=None):  # fmt: skip
    endpoint = _endpoint(request)
    if thresholds_form is None:
        current = alerts.alert_thresholds_for(request.tenant)
        thresholds_form = AlertThresholdsForm(
            initial={"thresholds": ", ".join(str(t) for t in current)}
        )
    if form is None:
        initial = {"url": endpoint.url, "event_types": endpoint.event_types} if endpoint else {}
        form = WebhookForm(initial=initial)
    deliveries = []
    if endpoint is not None:
        deliveries = endpoint.deliveries.prefetch_related(
            Prefetch("attempts", queryset=WebhookAttempt.objects.order_by("attempted_at", "id"))
        )[:RECENT_DELIVERIES]
    context = {"form": form, "endpoint": endpoint, "deliveries": deliveries, "secret": secret,
               "signature_header": webhooks.SIGNATURE_HEADER,
               "thresholds_form": thresholds_form,
               "currency": settings.BILLING_CURRENCY,
               "timeout_seconds": settings.WEBHOOK_TIMEOUT_SECONDS}  # fmt: skip
    response = render(request, "portal/webhooks.html", context, status=status)
    if secret is not None:
        response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@member_required(owner=True)
def webhook(request):
    if request.method == "GET":
        return _page(request)
    form = WebhookForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    try:
        issued = webhooks.webhook_endpoint_set(
            tenant=request.tenant, url=form.cleaned_data["url"],
            event_types=form.cleaned_data["event_types"],
        )  # fmt: skip
    except ValidationError as error:
        form.add_error(None, error)
        return _page(request, form, status=400)
    if issued is None:
        messages.success(request, "The endpoint is saved.")
        return redirect("portal:webhooks")
    return _page(request, secret=issued.secret)


@require_POST
@member_required(owner=True)
def webhook_roll(request):
    endpoint = _endpoint(request)
    if endpoint is None:
        return redirect("portal:webhooks")
    secret = webhooks.webhook_secret_roll(endpoint=endpoint)
    messages.success(request, "A new secret signs every event; the old one also does for 24 hours.")
    return _page(request, secret=secret)


@require_POST
@member_required(owner=True)
def webhook_test(request):
    if webhooks.webhook_test_send(tenant=request.tenant) is None:
        messages.error(request, "Add an enabled endpoint first.")
    else:
        messages.success(request, "A webhook.test event is on its way; it appears below.")
    return redirect("portal:webhooks")


@require_POST
@member_required(owner=True)
def webhook_remove(request):
    webhooks.webhook_endpoint_remove(tenant=request.tenant)
    messages.success(request, "The endpoint is removed; no more events are sent.")
    return redirect("portal:webhooks")


@require_POST
@member_required(owner=True)
def alert_thresholds(request):
    form = AlertThresholdsForm(request.POST)
    if not form.is_valid():
        return _page(request, thresholds_form=form, status=400)
    alerts.alert_thresholds_set(tenant=request.tenant, thresholds=form.cleaned_data["thresholds"])
    shown = ", ".join(f"{t}%" for t in alerts.alert_thresholds_for(request.tenant))
    messages.success(request, f"Spend alerts at {shown} of the monthly budget.")
    return redirect("portal:webhooks")
