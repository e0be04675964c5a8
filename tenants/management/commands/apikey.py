from datetime import timedelta

from django.core.management.base import CommandError
from django.utils import timezone

from saas_platform.cli import ScriptableCommand, first_or_fail, format_table
from tenants import services
from tenants.apikeys import normalize_prefix
from tenants.management.commands.tenant import get_tenant
from tenants.models import ApiKey


def get_key(prefix: str) -> ApiKey:
    keys = ApiKey.objects.select_related("tenant").filter(prefix=normalize_prefix(prefix))
    return first_or_fail(keys, f"no API key with prefix {prefix!r}")


class Command(ScriptableCommand):
    help = "Create, list, revoke and rotate API keys. Secrets are shown once, at creation."

    def add_arguments(self, parser):
        actions = self.add_actions(parser)
        create = actions.add_parser("create", help="issue a key; the key is the last stdout line")
        create.add_argument("slug")
        create.add_argument("--name", default="", help="what the key is for")
        create.add_argument(
            "--expires-days", type=int, metavar="N", help="expire after N days (default: never)"
        )
        create.add_argument(
            "--priority",
            choices=ApiKey.Priority.values,
            default=ApiKey.Priority.NORMAL,
            help="order among the tenant's requests waiting for a busy model (default normal)",
        )
        update = actions.add_parser("update", help="change a key's settings")
        update.add_argument("prefix", help="the key's prefix as listed, e.g. sk-AbC12345")
        update.add_argument(
            "--priority",
            choices=ApiKey.Priority.values,
            help="order among the tenant's requests waiting for a busy model",
        )
        revoke = actions.add_parser("revoke", help="revoke a key at once")
        revoke.add_argument("prefix", help="the key's prefix as listed, e.g. sk-AbC12345")
        rotate = actions.add_parser(
            "rotate", help="issue a replacement; the old key works for a grace period"
        )
        rotate.add_argument("prefix")
        rotate.add_argument(
            "--grace-hours",
            type=int,
            metavar="N",
            help="hours the old key keeps working (default: APIKEY_ROTATION_GRACE_SECONDS)",
        )
        listing = actions.add_parser("list", help="list a tenant's keys (prefixes only)")
        listing.add_argument("slug")

    def _print_secret(self, issued: services.IssuedKey) -> None:
        self.stderr.write("Store this key now: it is shown once and cannot be recovered.")
        self.stdout.write(issued.plaintext)

    def handle_create(self, options):
        tenant = get_tenant(options["slug"])
        expires_at = None
        if options["expires_days"] is not None:
            if options["expires_days"] < 1:
                raise CommandError("--expires-days must be at least 1")
            expires_at = timezone.now() + timedelta(days=options["expires_days"])
        issued = services.apikey_issue(tenant=tenant, name=options["name"], expires_at=expires_at,
                                       priority=options["priority"])  # fmt: skip
        expiry = issued.api_key.expires_at.isoformat() if expires_at else "never"
        self.stdout.write(
            f"created {issued.api_key.display_prefix} for {tenant.slug} (expires: {expiry})"
        )
        self._print_secret(issued)

    def handle_update(self, options):
        api_key = get_key(options["prefix"])
        if options["priority"] is None:
            raise CommandError("nothing to change: give --priority")
        services.apikey_update(api_key=api_key, priority=options["priority"])
        self.stdout.write(f"updated {api_key.display_prefix}: priority {api_key.priority}")

    def handle_revoke(self, options):
        api_key = services.apikey_revoke(api_key=get_key(options["prefix"]))
        self.stdout.write(f"revoked {api_key.display_prefix}")

    def handle_rotate(self, options):
        grace = None
        if options["grace_hours"] is not None:
            if options["grace_hours"] < 0:
                raise CommandError("--grace-hours cannot be negative")
            grace = timedelta(hours=options["grace_hours"])
        old = get_key(options["prefix"])
        try:
            issued = services.apikey_rotate(api_key=old, grace=grace)
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"rotated {old.display_prefix} -> {issued.api_key.display_prefix}; "
            f"the old key works until {old.expires_at.isoformat()}"
        )
        self._print_secret(issued)

    def handle_list(self, options):
        tenant = get_tenant(options["slug"])
        rows = [("PREFIX", "NAME", "STATE", "PRIORITY", "CREATED", "EXPIRES", "LAST USED")]
        for key in tenant.api_keys.all():
            rows.append(
                (
                    key.display_prefix,
                    key.name or "-",
                    key.state,
                    key.priority,
                    key.created_at.strftime("%Y-%m-%d %H:%M"),
                    key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "never",
                    key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never",
                )
            )
        for line in format_table(rows):
            self.stdout.write(line)
