"""Memberships from an identity provider's claims (`membership_sync_from_claims`), and the
`sso_required` setting's one validation, as the admin, the CLI and the services apply it."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from tenants import services
from tenants.models import Membership, Tenant
from tenants.quotas import TenantConfig, validate_tenant_config

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _sso(settings):
    settings.SSO_ENABLED = True
    settings.OIDC_TENANTS_CLAIM = "groups"
    settings.OIDC_STAFF_GROUP = "ops"


@pytest.fixture
def ada(db):
    return get_user_model().objects.create_user("ada@example.com", "ada@example.com")


def roles(user) -> dict[str, str]:
    return dict(Membership.objects.filter(user=user).values_list("tenant__slug", "role"))


def test_claims_create_update_and_remove_memberships(ada, acme, globex):
    access = services.membership_sync_from_claims(
        user=ada, claims={"groups": ["tenant:acme:member", "tenant:globex:owner"]}
    )
    assert roles(ada) == {"acme": "member", "globex": "owner"}
    assert [m.tenant.slug for m in access.memberships] == ["acme", "globex"]
    assert access.grants_anything
    assert not access.is_staff

    services.membership_sync_from_claims(user=ada, claims={"groups": ["tenant:acme:owner"]})
    assert roles(ada) == {"acme": "owner"}  # promoted in acme, gone from globex

    access = services.membership_sync_from_claims(user=ada, claims={"groups": []})
    assert roles(ada) == {}
    assert not access.grants_anything


def test_other_and_malformed_values_and_unknown_tenants_are_ignored(ada, acme, charlie):
    claims = {"groups": ["tenant:acme:admin", "tenant:nope:owner", "acme", "tenant::member",
                         "tenant:acme:member:x", 7, None, "tenant:acme:member"]}  # fmt: skip
    services.membership_sync_from_claims(user=ada, claims=claims)
    assert roles(ada) == {"acme": "member"}
    assert not Tenant.objects.filter(slug="nope").exists()
    assert roles(charlie) == {"globex": "owner"}  # nobody else's memberships change


def test_the_higher_of_two_roles_wins_and_a_single_string_counts(ada, acme, settings):
    services.membership_sync_from_claims(
        user=ada, claims={"groups": ["tenant:acme:owner", "tenant:acme:member"]}
    )
    assert roles(ada) == {"acme": "owner"}
    settings.OIDC_TENANTS_CLAIM = "roles"
    services.membership_sync_from_claims(user=ada, claims={"roles": "tenant:acme:member"})
    assert roles(ada) == {"acme": "member"}


def test_the_provider_is_the_authority_even_over_the_last_owner(alice, acme):
    services.membership_sync_from_claims(user=alice, claims={"groups": ["tenant:acme:member"]})
    assert roles(alice) == {"acme": "member"}  # the portal would refuse this (LastOwner)


def test_staff_follows_the_staff_group_when_set(ada, settings):
    access = services.membership_sync_from_claims(user=ada, claims={"groups": ["ops"]})
    ada.refresh_from_db()
    assert access.is_staff
    assert (ada.is_staff, ada.is_superuser) == (True, True)
    assert access.grants_anything

    services.membership_sync_from_claims(user=ada, claims={"groups": []})
    ada.refresh_from_db()
    assert (ada.is_staff, ada.is_superuser) == (False, False)

    # Without OIDC_STAFF_GROUP single sign-on never changes who is staff.
    settings.OIDC_STAFF_GROUP = ""
    operator = get_user_model().objects.create_superuser("op", "op@example.com", "pw-op-123")
    access = services.membership_sync_from_claims(user=operator, claims={"groups": []})
    operator.refresh_from_db()
    assert operator.is_superuser
    assert access.is_staff


def test_sso_required_is_validated_like_the_quotas(settings, acme):
    validate_tenant_config(TenantConfig(sso_required=True))
    with pytest.raises(ValidationError) as error:
        validate_tenant_config(TenantConfig(sso_required="yes"))
    assert error.value.message_dict == {"sso_required": ["SSO required must be true or false."]}

    settings.SSO_ENABLED = False
    with pytest.raises(ValidationError) as error:
        services.tenant_update(tenant=acme, sso_required=True)
    assert "OIDC_ISSUER" in error.value.message_dict["sso_required"][0]
    assert not Tenant.objects.get(slug="acme").sso_required


def test_the_cli_sets_sso_required_and_refuses_it_without_sso(manage, subprocess_env, acme):
    result = manage("tenant", "update", "acme", "--sso-required")
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "SSO required needs single sign-on configured (OIDC_ISSUER)" in line
    assert not Tenant.objects.get(slug="acme").sso_required

    subprocess_env.update(OIDC_ISSUER="https://id.example.com", OIDC_CLIENT_ID="platform",
                          OIDC_CLIENT_SECRET="s3cret")  # fmt: skip
    result = manage("tenant", "update", "acme", "--sso-required")
    assert result.returncode == 0, result.stderr
    assert Tenant.objects.get(slug="acme").sso_required
    result = manage("tenant", "update", "acme", "--no-sso-required")
    assert result.returncode == 0, result.stderr
    assert not Tenant.objects.get(slug="acme").sso_required
