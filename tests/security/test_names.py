"""Names others read (tenants, API keys, accounts) refuse control and text-direction characters:
a right-to-left override made `invoice<U+202E>gpj.exe` show as `invoiceexe.jpg` in the admin,
the members' pages and the CSVs, and was accepted everywhere."""

import pytest
from django.contrib.auth import get_user_model

from tenants import services
from tenants.models import ApiKey, Membership, Tenant
from tests.conftest import tenant_admin_form
from tests.security.conftest import post_form, signed_in

RLO = "invoice\u202egpj.exe"
REFUSAL = "Names cannot contain control characters or text-direction controls"


@pytest.fixture
def acme_owner(gateway, transactional_db):
    tenant = services.tenant_register(slug="acme", name="Acme")
    user = get_user_model().objects.create_user("ann", "ann@example.com", "ann-pass-1234")
    services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
    get_user_model().objects.create_superuser("op", "op@example.com", "operator-pass-1")
    return tenant


@pytest.mark.parametrize("name", [RLO, "left\u2066isolate", "bell\x07", "new\nline", "\u200fmark"])
def test_the_portal_refuses_such_a_key_name(gateway, acme_owner, name):
    with signed_in(gateway.url, "ann", "ann-pass-1234") as client:
        response = post_form(client, "/portal/keys/", {"name": name})

    assert response.status_code == 400
    assert REFUSAL in response.text
    assert not ApiKey.objects.exists()


def test_names_in_scripts_that_need_joiners_are_fine(gateway, acme_owner):
    with signed_in(gateway.url, "ann", "ann-pass-1234") as client:
        response = post_form(client, "/portal/keys/", {"name": "क्‍ष production 👩‍💻"})

    assert response.status_code == 200
    assert ApiKey.objects.get().name == "क्‍ष production 👩‍💻"


def test_the_admin_refuses_such_a_tenant_or_member_name(gateway, acme_owner):
    ann = get_user_model().objects.get(username="ann")
    with signed_in(gateway.url, "op", "operator-pass-1", login="/admin/login/") as client:
        tenant = post_form(client, "/admin/tenants/tenant/add/", tenant_admin_form(name=RLO))
        person = post_form(client, f"/admin/auth/user/{ann.pk}/change/", {
            "username": "ann", "first_name": RLO, "last_name": "", "email": ann.email,
            "is_active": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
        })  # fmt: skip

    assert tenant.status_code == 200  # the form again, with the error
    assert REFUSAL in tenant.text
    assert not Tenant.objects.filter(slug="initech").exists()
    assert person.status_code == 200
    assert REFUSAL in person.text
    ann.refresh_from_db()
    assert ann.first_name == ""


def test_the_cli_refuses_them_too(manage, acme_owner):
    tenant = manage("tenant", "create", "initech", "--name", RLO)
    key = manage("apikey", "create", "acme", "--name", RLO)

    assert tenant.returncode != 0
    assert REFUSAL in tenant.stderr
    assert key.returncode != 0
    assert REFUSAL in key.stderr
    assert not Tenant.objects.filter(slug="initech").exists()
    assert not ApiKey.objects.exists()
