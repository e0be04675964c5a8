from django.core.management.base import BaseCommand

from tenants import services
from tenants.models import Tenant

DEMO_SLUG = "demo"


class Command(BaseCommand):
    help = "On a new database, create the demo tenant and key and print the key once."

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
            tenant = services.tenant_register(slug=DEMO_SLUG, name="Demo tenant")
            key = services.apikey_issue(tenant=tenant, name="demo").plaintext
            self.stdout.write(
                f"\nSeeded tenant '{tenant.slug}' and its API key (shown once, store it now):"
                f"\n\n    {key}"
            )
        self.stdout.write(
            "\nTry it:\n\n"
            f"    curl -s {base_url}/healthz\n\n"
            f'    curl -s {base_url}/v1/models -H "Authorization: Bearer {key}"\n\n'
            f'    python -c "from openai import OpenAI; '
            f"c = OpenAI(base_url='{base_url}/v1', api_key='{key}'); "
            'print(c.models.list())"\n'
        )
