from datetime import timedelta

from django.conf import settings
from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.module_loading import import_string

from saas_platform.cli import ScriptableCommand, decimal_amount, first_or_fail, format_table
from tenants import services
from tenants.apikeys import normalize_prefix
from tenants.management.commands.tenant import get_tenant
from tenants.models import ApiKey
from tenants.quotas import KeyLimits


def get_key(prefix: str) -> ApiKey:
    keys = ApiKey.objects.select_related("tenant").filter(prefix=normalize_prefix(prefix))
    return first_or_fail(keys, f"no API key with prefix {prefix!r}")


def _limit_options(parser, *, update: bool = False) -> None:
    unset = " (0 removes it)" if update else " (default: the tenant's)"
    parser.add_argument(
        "--max-concurrent",
        type=int,
        dest="max_concurrent_requests",
        metavar="N",
        help="the key's requests in flight at once" + unset,
    )
    parser.add_argument(
        "--tpm",
        type=int,
        dest="max_tokens_per_minute",
        metavar="N",
        help="the key's tokens per minute" + unset,
    )
    parser.add_argument(
        "--rpm",
        type=int,
        dest="max_requests_per_minute",
        metavar="N",
        help="the key's requests per minute" + unset,
    )
    parser.add_argument(
        "--budget",
        type=decimal_amount,
        dest="monthly_budget",
        metavar="AMOUNT",
        help="the key's monthly budget (default: the tenant's only)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        dest="model_allow_list",
        metavar="MODEL",
        help="a model the key may use, among its tenant's; repeat for more",
    )


def _limit_changes(options) -> dict:
    changes = {
        field: options[field]
        for field in services.KEY_LIMIT_FIELDS
        if options.get(field) is not None
    }
    if options.get("no_budget"):
        if "monthly_budget" in changes:
            raise CommandError("--no-budget and --budget contradict each other")
        changes["monthly_budget"] = None
    if options.get("allow_all"):
        if "model_allow_list" in changes:
            raise CommandError("--allow-all and --allow contradict each other")
        changes["model_allow_list"] = []
    return changes


def _limits_text(key: ApiKey) -> str:
    limits = key.limits
    parts = [
        f"{label}={value}"
        for label, value in (
            ("concurrent", limits.max_concurrent_requests),
            ("tpm", limits.max_tokens_per_minute),
            ("rpm", limits.max_requests_per_minute),
            ("budget", limits.monthly_budget),
        )
        if value is not None
    ]
    if limits.model_allow_list:
        parts.append("models=" + ",".join(limits.model_allow_list))
    return " ".join(parts) or "tenant's"


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
            "--scope",
            choices=ApiKey.Scope.values,
            default=ApiKey.Scope.INFERENCE,
            help="inference (default): calls /v1/; manage: manages keys at /api/keys only",
        )
        create.add_argument(
            "--priority",
            choices=ApiKey.Priority.values,
            default=ApiKey.Priority.NORMAL,
            help="order among the tenant's requests waiting for a busy model (default normal)",
        )
        _limit_options(create)
        update = actions.add_parser("update", help="change a key's name or its own limits")
        update.add_argument("prefix")
        update.add_argument("--name", help="what the key is for")
        _limit_options(update, update=True)
        update.add_argument(
            "--priority",
            choices=ApiKey.Priority.values,
            help="order among the tenant's requests waiting for a busy model",
        )
        update.add_argument("--no-budget", action="store_true", help="remove the key's budget")
        update.add_argument(
            "--allow-all", action="store_true", help="clear the key's allow list (its tenant's)"
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
        limits = _limit_changes(options)
        issued = services.apikey_issue(
            tenant=tenant,
            name=options["name"],
            expires_at=expires_at,
            limits=KeyLimits(**limits),
            scope=options["scope"],
            priority=options["priority"],
        )
        expiry = issued.api_key.expires_at.isoformat() if expires_at else "never"
        self.stdout.write(
            f"created {issued.api_key.display_prefix} for {tenant.slug} "
            f"(scope: {issued.api_key.scope}, expires: {expiry})"
        )
        self._print_secret(issued)

    def handle_update(self, options):
        api_key = get_key(options["prefix"])
        changes = _limit_changes(options)
        for field in (
            "max_concurrent_requests",
            "max_tokens_per_minute",
            "max_requests_per_minute",
        ):
            if changes.get(field) == 0:
                changes[field] = None
        if options["priority"] is not None:
            changes["priority"] = options["priority"]
        if not changes and options["name"] is None:
            raise CommandError("nothing to update: give at least one option")
        if options["name"] is not None:
            changes["name"] = options["name"]
        api_key = services.apikey_update(api_key=api_key, **changes)
        self.stdout.write(f"updated {api_key.display_prefix}: priority {api_key.priority}, "
                          f"limits {_limits_text(api_key)}")  # fmt: skip

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
        rows = [
            (
                "PREFIX",
                "NAME",
                "SCOPE",
                "STATE",
                "PRIORITY",
                "CREATED",
                "EXPIRES",
                "LAST USED",
                "LIMITS",
                "SPENT THIS MONTH",
            )
        ]
        spent = import_string(settings.TENANT_KEY_SPEND)(tenant)
        for key in tenant.api_keys.all():
            rows.append(
                (
                    key.display_prefix,
                    key.name or "-",
                    key.scope,
                    key.state,
                    key.priority,
                    key.created_at.strftime("%Y-%m-%d %H:%M"),
                    key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "never",
                    key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never",
                    _limits_text(key),
                    str(spent.get(key.display_prefix, 0)),
                )
            )
        for line in format_table(rows):
            self.stdout.write(line)
