"""The audit log's table refuses UPDATE and DELETE (ORM and raw SQL) except the pruning of rows
past AUDIT_RETENTION_DAYS; who acted is the request's user, `cli` with the OS user, or
`system`; sign-ins, failures and lockouts are recorded; the admin filters and exports it, and
the portal shows owners their own tenant's log only."""

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_prune, audit_record
from audit.tasks import prune_audit_log
from saas_platform.actors import os_user
from tenants import services
from tests.portal.conftest import sign_in_client


def _old_row(days: int) -> AuditEvent:
    return AuditEvent.objects.create(
        created_at=timezone.now() - timedelta(days=days), actor_kind="system",
        actor_name="system", action="test.old",
    )  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    "write",
    [
        lambda row: AuditEvent.objects.filter(pk=row.pk).update(action="forged"),
        lambda row: AuditEvent.objects.filter(pk=row.pk).delete(),
        lambda row: row.delete(),
        lambda row: connection.cursor().execute(
            "UPDATE audit_auditevent SET actor_name = 'someone else' WHERE id = %s", [row.pk]
        ),
        lambda row: connection.cursor().execute("DELETE FROM audit_auditevent"),
    ],
    ids=["orm-update", "orm-delete", "instance-delete", "sql-update", "sql-delete"],
)
def test_the_table_refuses_changes_and_deletes(write):
    row = _old_row(days=1000)  # even a row past retention, outside the pruning

    with pytest.raises(DatabaseError, match="not allowed"), transaction.atomic():
        write(row)

    row.refresh_from_db()
    assert (row.action, row.actor_name) == ("test.old", "system")


@pytest.mark.django_db
def test_pruning_deletes_only_rows_past_retention(settings):
    settings.AUDIT_RETENTION_DAYS = 400
    old, kept = _old_row(days=401), _old_row(days=399)

    assert prune_audit_log() == 1

    assert not AuditEvent.objects.filter(pk=old.pk).exists()
    assert AuditEvent.objects.filter(pk=kept.pk).exists()
    pruned = AuditEvent.objects.get(action="audit.pruned")
    assert (pruned.actor_kind, pruned.changes["rows"]) == ("system", [None, 1])
    # The permit lasted only for that transaction.
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=kept.pk).delete()
    assert audit_prune() == 0


@pytest.mark.django_db
def test_a_secret_field_is_refused():
    with pytest.raises(ValueError, match="secret"):
        audit_record(action="test.secret", changes={"password": ("a", "b")})
    assert not AuditEvent.objects.filter(action="test.secret").exists()


def test_a_command_acts_as_cli_with_the_os_user(db):
    call_command("tenant", "create", "initech", stdout=io.StringIO())

    row = AuditEvent.objects.get(action="tenant.created")
    assert (row.actor_kind, row.actor_name, row.os_user) == ("cli", "cli", os_user())
    assert row.tenant_slug == "initech"


def test_outside_a_request_or_command_the_actor_is_system(acme):
    row = AuditEvent.objects.get(action="tenant.created", tenant_id=acme.pk)
    assert (row.actor_kind, row.actor_name) == ("system", "system")


def test_a_portal_change_names_the_member_their_address_and_browser(client, alice, acme):
    sign_in_client(client, alice, acme)

    client.post("/portal/keys/", {"name": "from the portal"}, HTTP_USER_AGENT="Firefox/140")

    row = AuditEvent.objects.get(action="apikey.created")
    assert (row.actor_kind, row.actor_name, row.actor_user_id) == ("user", "alice", alice.pk)
    assert (row.address, row.user_agent) == ("127.0.0.1", "Firefox/140")
    assert row.changes["name"] == [None, "from the portal"]


def test_sign_ins_failures_and_the_lockout_are_recorded(client, alice, settings):
    settings.AXES_FAILURE_LIMIT = 2

    client.post("/portal/login/", {"username": "alice", "password": "pw-alice-123"})
    client.post("/portal/logout/")
    for _ in range(3):  # two failures lock out; the third is refused while locked out
        client.post("/portal/login/", {"username": "alice", "password": "wrong"})

    rows = list(AuditEvent.objects.filter(action__startswith="signin.").order_by("id"))
    assert [row.action for row in rows] == [
        "signin.succeeded", "signin.failed", "signin.failed", "signin.locked_out",
        "signin.failed",
    ]  # fmt: skip
    assert (rows[0].actor_kind, rows[0].actor_name) == ("user", "alice")
    assert {row.actor_kind for row in rows[1:]} == {"anonymous"}
    assert {row.object_repr for row in rows} == {"alice"}
    assert all(row.address == "127.0.0.1" for row in rows)
    assert "wrong" not in str([row.changes for row in rows])


def test_the_admin_filters_and_exports_the_log(client, acme, globex):
    staff = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123")
    client.force_login(staff)
    services.tenant_suspend(tenant=globex)

    page = client.get("/admin/audit/auditevent/", {"action": "tenant.suspended"})
    export = client.get("/admin/audit/auditevent/export.csv", {"action": "tenant.suspended"})

    assert page.status_code == 200
    assert b"globex" in page.content
    assert b"status: active \xe2\x86\x92 suspended" in page.content
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert [(r["action"], r["tenant"]) for r in rows] == [("tenant.suspended", "globex")]
    assert export["Content-Type"].startswith("text/csv")


def test_the_admin_export_needs_staff(client, alice):
    client.force_login(alice)

    response = client.get("/admin/audit/auditevent/export.csv")

    assert response.status_code == 302  # to the admin's sign-in
    assert "login" in response["Location"]


def test_owners_see_their_own_tenants_log_only(client, alice, bob, acme, charlie, globex):
    services.tenant_suspend(tenant=globex)
    sign_in_client(client, alice, acme)

    page = client.get("/portal/audit/")

    assert page.status_code == 200
    assert b"apikey.created" not in page.content
    assert b"member.added" in page.content
    assert b"tenant.suspended" not in page.content  # globex's
    assert b"charlie" not in page.content


def test_members_who_are_not_owners_cannot_see_the_log(client, bob, acme):
    sign_in_client(client, bob, acme)

    assert client.get("/portal/audit/").status_code == 403
