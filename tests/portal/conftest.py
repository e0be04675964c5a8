import pytest


def sign_in_client(client, user, tenant=None):
    client.force_login(user)
    if tenant is not None:
        session = client.session
        session["portal_tenant_id"] = tenant.pk
        session.save()
    return client


@pytest.fixture
def alice_client(client, alice, acme):
    return sign_in_client(client, alice, acme)
