"""Every action the audit log covers leaves exactly one row, with the actor and the changed
fields, and no secret. The service modules are read for their state-changing functions (the
keyword-only `<entity>_<verb>` ones): a new one fails `test_every_service_function_is_covered`
until it has a case here (or an exemption saying why it records nothing)."""

import inspect
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import SECRET_WORDS
from billing import alerts, credits, downloads, invoices, pricing, webhooks
from billing.invoices import invoice_data, month_start
from billing.models import Invoice, WebhookDelivery, WebhookEndpoint
from models_mgmt import placements
from models_mgmt import services as models_services
from models_mgmt.models import ServedModel
from saas_platform.actors import Actor, acting_as
from tenants import invitations
from tenants import services as tenant_services
from tenants.models import Membership

SERVICE_MODULES = [tenant_services, invitations, pricing, invoices, models_services, placements,
                   credits, webhooks, alerts]  # fmt: skip

# State-changing functions that write no row of their own, and why.
EXEMPT = {
    "invoices_close_due": "closes each month through invoice_close, which records it",
    "placement_request_load": "queues a load; placement_load, which does it, records it",
    "placement_reconcile": "bookkeeping to match the engines that run, after a restart",
    "node_heartbeat": "liveness, every few seconds",
    "placement_measure": "measured memory, every tick",
    "withdraw_silent_nodes": "routing follows liveness; nothing is changed by anyone",
    "invoices_close_month": "closes each tenant's month through invoice_close, which records it",
    "placement_request_scale_out": "queues a load; placement_load, which does it, records it",
    "validate_price": "a check; price_set records the price",
    "validate_credit_grant": "a check; credits_grant records the grant",
    "credits_draw": "the ledger's draw-down of stored usage, with every batch",
    "credits_lapse_expired": "expired grants lapse by their own terms (beat), as a ledger row",
    "credits_reconcile": "Redis counters from the credit ledger",
    "webhook_event_emit": "an event about a change that is recorded where it is made",
    "webhook_test_send": "sends a test event; nothing is changed",
    "apikeys_expiring_notify": "events about keys about to expire (beat)",
    "alert_email_send": "the email of an alert (the alert is the ledger's)",
    "alerts_unemailed": "a read",
}

ACTOR = Actor(kind="user", name="auditor", user_id=None, address="203.0.113.7",
              user_agent="coverage-test")  # fmt: skip


def state_changing_functions() -> set[str]:
    found = set()
    for module in SERVICE_MODULES:
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("_") or function.__module__ != module.__name__:
                continue
            parameters = inspect.signature(function).parameters.values()
            if all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters):
                found.add(name)
    return found


@dataclass(frozen=True)
class Case:
    service: str  # the function (or entry point) exercised
    action: str
    fields: tuple[str, ...]
    act: object  # world -> None; runs as ACTOR
    arrange: object = None  # world -> None; before counting


def _invoice(world) -> Invoice:
    return Invoice.objects.create(
        tenant=world.acme, period=date(2026, 1, 1), number="INV-TEST-1", currency="USD",
        total=Decimal("10.00"), covers_through_id=0,
    )  # fmt: skip


def _last_month() -> date:
    return (month_start() - timedelta(days=1)).replace(day=1)


def _with_invitation(world):
    world.invitation = invitations.invitation_create(tenant=world.acme, email="new@example.com")


def _with_node_and_model(world):
    world.node = placements.node_add(name="gpu-a", vram_bytes=10**9)
    models_services.model_register(model_id="smol", engine="local", vram_bytes=1000)


def _loaded(world):
    _with_node_and_model(world)
    placements.placement_load(node_name="gpu-a", model_id="smol")


def _with_endpoint(world):
    webhooks.webhook_endpoint_set(tenant=world.acme, url="https://hooks.example.com/x",
                                  event_types=[])  # fmt: skip


def _with_delivery(world):
    _with_endpoint(world)
    webhooks.webhook_test_send(tenant=world.acme)


def _edited_model(world):
    model = ServedModel.objects.get(model_id="smol")
    model.vram_bytes = 2000
    models_services.model_save(model=model)


CASES = [
    Case("tenant_register", "tenant.created", ("slug", "max_concurrent_requests"),
         lambda w: tenant_services.tenant_register(slug="initech")),
    Case("tenant_update", "tenant.quotas_changed", ("max_tokens_per_minute",),
         lambda w: tenant_services.tenant_update(tenant=w.acme, max_tokens_per_minute=1234)),
    Case("tenant_suspend", "tenant.suspended", ("status",),
         lambda w: tenant_services.tenant_suspend(tenant=w.acme)),
    Case("tenant_resume", "tenant.resumed", ("status",),
         lambda w: tenant_services.tenant_resume(tenant=w.acme),
         arrange=lambda w: tenant_services.tenant_suspend(tenant=w.acme)),
    Case("tenant_remove", "tenant.removed", ("deleted",),
         lambda w: tenant_services.tenant_remove(tenant=w.globex)),
    Case("membership_set", "member.added", ("role",),
         lambda w: tenant_services.membership_set(tenant=w.acme, user=w.dave)),
    Case("membership_set", "member.role_changed", ("role",),
         lambda w: tenant_services.membership_set(tenant=w.acme, user=w.bob,
                                                  role=Membership.Role.OWNER)),
    Case("membership_remove", "member.removed", ("role",),
         lambda w: tenant_services.membership_remove(
             membership=Membership.objects.get(user=w.bob))),
    Case("invitation_create", "member.invited", ("email", "role"),
         lambda w: invitations.invitation_create(tenant=w.acme, email="new@example.com")),
    Case("invitation_accept", "member.joined", ("role",),
         lambda w: invitations.invitation_accept(invitation=w.invitation.invitation, user=w.dave),
         arrange=lambda w: setattr(w, "invitation", invitations.invitation_create(
             tenant=w.acme, email="dave@example.com"))),
    Case("invitation_accept_new_account", "member.joined", ("role",),
         lambda w: invitations.invitation_accept_new_account(
             invitation=w.invitation.invitation, password="pw-long-new-password-1"),
         arrange=_with_invitation),
    Case("invitation_cancel", "invitation.cancelled", ("email",),
         lambda w: invitations.invitation_cancel(invitation=w.invitation.invitation),
         arrange=_with_invitation),
    Case("apikey_issue", "apikey.created", ("name", "scope"),
         lambda w: tenant_services.apikey_issue(tenant=w.acme, name="ci")),
    Case("apikey_revoke", "apikey.revoked", ("revoked_at",),
         lambda w: tenant_services.apikey_revoke(api_key=w.key)),
    Case("apikey_rotate", "apikey.rotated", ("expires_at", "replaced_by"),
         lambda w: tenant_services.apikey_rotate(api_key=w.key)),
    Case("apikey_update", "apikey.changed", ("name",),
         lambda w: tenant_services.apikey_update(api_key=w.key, name="renamed")),
    Case("price_set", "price.set", ("input_per_million", "output_per_million"),
         lambda w: pricing.price_set(model_id="smol", input_per_million=Decimal("1.5"),
                                     output_per_million=Decimal("2"))),
    Case("invoice_close", "invoice.closed", ("status", "number", "total"),
         lambda w: invoices.invoice_close(tenant=w.acme, period=_last_month())),
    Case("credit_note_issue", "invoice.credited", ("credit_note", "amount", "reason"),
         lambda w: invoices.credit_note_issue(invoice=_invoice(w), amount=Decimal("2.50"),
                                              reason="outage")),
    Case("invoice_download", "invoice.exported", ("format", "period"),
         lambda w: downloads.invoice_download(invoice_data(_invoice(w)), "csv")),
    Case("model_register", "model.registered", ("engine", "vram_bytes"),
         lambda w: models_services.model_register(model_id="smol", engine="local")),
    Case("model_register", "model.changed", ("vram_bytes",),
         lambda w: models_services.model_register(model_id="smol", engine="local",
                                                  vram_bytes=5000),
         arrange=_with_node_and_model),
    Case("model_save", "model.changed", ("vram_bytes",), _edited_model,
         arrange=_with_node_and_model),
    Case("model_set_pinned", "model.pinned", ("pinned",),
         lambda w: models_services.model_set_pinned(
             model=ServedModel.objects.get(model_id="smol"), pinned=True),
         arrange=_with_node_and_model),
    Case("placement_load", "model.loaded", ("node",),
         lambda w: placements.placement_load(node_name="gpu-a", model_id="smol"),
         arrange=_with_node_and_model),
    Case("placement_evict", "model.evicted", ("node", "reason"),
         lambda w: placements.placement_evict(node_name="gpu-a", model_id="smol"),
         arrange=_loaded),
    Case("node_add", "node.added", ("name", "vram_budget_bytes"),
         lambda w: placements.node_add(name="gpu-b", vram_bytes=10**9)),
    Case("node_update", "node.changed", ("vram_budget_bytes",),
         lambda w: placements.node_update(node=w.node, vram_budget_bytes=2 * 10**9),
         arrange=_with_node_and_model),
    Case("credits_grant", "credits.granted", ("amount", "reason", "expires_at"),
         lambda w: credits.credits_grant(tenant=w.acme, amount=Decimal("5"), reason="trial")),
    Case("webhook_endpoint_set", "webhook.created", ("url", "event_types"),
         lambda w: webhooks.webhook_endpoint_set(tenant=w.acme, url="https://hooks.example.com/x",
                                                 event_types=[])),
    Case("webhook_endpoint_set", "webhook.changed", ("url",),
         lambda w: webhooks.webhook_endpoint_set(tenant=w.acme, url="https://hooks.example.com/y",
                                                 event_types=[]),
         arrange=_with_endpoint),
    Case("webhook_endpoint_remove", "webhook.removed", ("url",),
         lambda w: webhooks.webhook_endpoint_remove(tenant=w.acme), arrange=_with_endpoint),
    Case("webhook_secret_roll", "webhook.rolled", ("previous_until",),
         lambda w: webhooks.webhook_secret_roll(
             endpoint=WebhookEndpoint.objects.get(tenant=w.acme)),
         arrange=_with_endpoint),
    Case("webhook_delivery_resend", "webhook.resent", ("state",),
         lambda w: webhooks.webhook_delivery_resend(delivery=WebhookDelivery.objects.get()),
         arrange=_with_delivery),
    Case("alert_thresholds_set", "alerts.thresholds_changed", ("thresholds",),
         lambda w: alerts.alert_thresholds_set(tenant=w.acme, thresholds=[25, 90])),
    Case("membership_sync_from_claims", "member.added", ("role",),
         lambda w: tenant_services.membership_sync_from_claims(
             user=w.dave, claims={"groups": ["tenant:acme:member"]})),
]  # fmt: skip


@pytest.fixture
def world(acme, globex, alice, bob, acme_key):
    dave = get_user_model().objects.create_user("dave", "dave@example.com", "pw-dave-123")
    return SimpleNamespace(acme=acme, globex=globex, alice=alice, bob=bob, dave=dave,
                           key=acme_key.api_key)  # fmt: skip


def test_every_service_function_is_covered():
    covered = {case.service for case in CASES}
    missing = state_changing_functions() - covered - set(EXEMPT)
    assert not missing, f"service functions with no audit case: {sorted(missing)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.service}-{c.action}")
def test_each_action_leaves_exactly_one_row(case, world):
    if case.arrange is not None:
        case.arrange(world)
    before = set(AuditEvent.objects.values_list("pk", flat=True))

    with acting_as(ACTOR):
        case.act(world)

    rows = list(AuditEvent.objects.exclude(pk__in=before))
    assert [row.action for row in rows] == [case.action]
    row = rows[0]
    assert (row.actor_kind, row.actor_name) == ("user", "auditor")
    assert (row.address, row.user_agent) == ("203.0.113.7", "coverage-test")
    assert set(case.fields) <= set(row.changes)
    assert all(len(pair) == 2 for pair in row.changes.values())
    written = " ".join(f"{k} {v}" for k, v in row.changes.items()).lower()
    assert not any(set(k.lower().split("_")) & set(SECRET_WORDS) for k in row.changes)
    assert "pw-" not in written  # no fixture password


def test_nothing_changed_writes_no_row(world):
    before = AuditEvent.objects.count()

    tenant_services.tenant_update(tenant=world.acme, name=world.acme.name)
    tenant_services.membership_set(tenant=world.acme, user=world.bob, role=Membership.Role.MEMBER)
    tenant_services.apikey_update(api_key=world.key, name=world.key.name)

    assert AuditEvent.objects.count() == before


def test_the_key_itself_is_never_recorded(world):
    issued = tenant_services.apikey_issue(tenant=world.acme, name="secret-holder")
    rotated = tenant_services.apikey_rotate(api_key=issued.api_key)

    text = " ".join(str(row.changes) + row.object_repr for row in AuditEvent.objects.all())
    for key in (issued, rotated):
        assert key.plaintext not in text
        assert key.api_key.digest not in text


def test_a_tenants_rows_name_it_even_after_it_is_deleted(world):
    globex_id = world.globex.pk

    tenant_services.tenant_remove(tenant=world.globex)

    row = AuditEvent.objects.get(action="tenant.removed")
    assert (row.tenant_id, row.tenant_slug) == (globex_id, "globex")
    assert AuditEvent.objects.filter(tenant_id=globex_id, action="tenant.created").exists()
    assert timezone.now() - row.created_at < timedelta(minutes=1)
