import argparse

from django.core.management.base import CommandError

from saas_platform.cli import ScriptableCommand, decimal_amount, first_or_fail, format_table
from tenants import services
from tenants.models import Tenant
from tenants.quotas import DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_TOKENS_PER_MINUTE


def get_tenant(slug: str) -> Tenant:
    return first_or_fail(Tenant.objects.filter(slug=slug), f"no tenant with slug {slug!r}")


class Command(ScriptableCommand):
    help = "Create, update, suspend, resume, remove and list tenants."

    def add_arguments(self, parser):
        actions = self.add_actions(parser)

        def config_options(sub, *, defaults: bool):
            sub.add_argument("--name", help="display name (default: the slug)")
            sub.add_argument(
                "--max-concurrent",
                type=int,
                dest="max_concurrent_requests",
                help=f"requests in flight at once (default {DEFAULT_MAX_CONCURRENT_REQUESTS})"
                if defaults
                else "requests in flight at once",
            )
            sub.add_argument(
                "--tpm",
                type=int,
                dest="max_tokens_per_minute",
                help=f"tokens per minute (default {DEFAULT_MAX_TOKENS_PER_MINUTE})"
                if defaults
                else "tokens per minute",
            )
            sub.add_argument(
                "--rpm",
                type=int,
                dest="max_requests_per_minute",
                help="requests per minute (default: no limit; 0 removes the limit on update)",
            )
            sub.add_argument(
                "--allow",
                action="append",
                dest="model_allow_list",
                metavar="MODEL",
                help="a model the tenant may use; repeat for more (default: every model)",
            )
            sub.add_argument(
                "--weight",
                type=int,
                dest="queue_weight",
                help="share of a busy model's engines against other waiting tenants"
                + (" (default 1)" if defaults else ""),
            )
            sub.add_argument(
                "--max-queued",
                type=int,
                dest="max_queued_requests",
                metavar="N",
                help="requests that may wait for a busy model at once (default: the "
                "concurrency limit)",
            )
            sub.add_argument(
                "--budget",
                type=decimal_amount,
                dest="monthly_budget",
                metavar="AMOUNT",
                help="monthly budget in the operator's currency (default: none; "
                "'none' is not accepted, use --no-budget on update)",
            )
            sub.add_argument(
                "--prepaid",
                action=argparse.BooleanOptionalAction,
                help="admit requests only while prepaid credits cover them (`credits grant`)"
                + (" (default: not prepaid)" if defaults else ""),
            )
            sub.add_argument(
                "--sso-required",
                action=argparse.BooleanOptionalAction,
                help="members sign in through single sign-on only (default: no)",
            )

        create = actions.add_parser("create", help="register a tenant")
        create.add_argument("slug")
        config_options(create, defaults=True)

        update = actions.add_parser("update", help="change a tenant's name or quotas")
        update.add_argument("slug")
        config_options(update, defaults=False)
        update.add_argument(
            "--allow-all", action="store_true", help="clear the allow list (every model)"
        )
        update.add_argument("--no-budget", action="store_true", help="remove the budget")

        for name, text in [
            ("suspend", "refuse every request of the tenant"),
            ("resume", "serve the tenant again"),
            ("remove", "delete a tenant without usage; suspend and revoke one with usage"),
        ]:
            actions.add_parser(name, help=text).add_argument("slug")
        actions.add_parser("list", help="list tenants")

    @staticmethod
    def _changes(options) -> dict:
        fields = [
            "name",
            "max_concurrent_requests",
            "max_tokens_per_minute",
            "max_requests_per_minute",
            "model_allow_list",
            "monthly_budget",
            "prepaid",
            "sso_required",
            "queue_weight",
            "max_queued_requests",
        ]
        return {field: options[field] for field in fields if options.get(field) is not None}

    def handle_create(self, options):
        if Tenant.objects.filter(slug=options["slug"]).exists():
            raise CommandError(f"a tenant with slug {options['slug']!r} already exists")
        tenant = services.tenant_register(slug=options["slug"], **self._changes(options))
        self.stdout.write(f"created tenant {tenant.slug}")

    def handle_update(self, options):
        tenant = get_tenant(options["slug"])
        changes = self._changes(options)
        if options["allow_all"]:
            if "model_allow_list" in changes:
                raise CommandError("--allow-all and --allow contradict each other")
            changes["model_allow_list"] = []
        if options["no_budget"]:
            if "monthly_budget" in changes:
                raise CommandError("--no-budget and --budget contradict each other")
            changes["monthly_budget"] = None
        if changes.get("max_requests_per_minute") == 0:
            changes["max_requests_per_minute"] = None
        if not changes:
            raise CommandError("nothing to update: give at least one option")
        services.tenant_update(tenant=tenant, **changes)
        self.stdout.write(f"updated tenant {tenant.slug}")

    def handle_suspend(self, options):
        services.tenant_suspend(tenant=get_tenant(options["slug"]))
        self.stdout.write(f"suspended tenant {options['slug']}")

    def handle_resume(self, options):
        services.tenant_resume(tenant=get_tenant(options["slug"]))
        self.stdout.write(f"resumed tenant {options['slug']}")

    def handle_remove(self, options):
        deleted = services.tenant_remove(tenant=get_tenant(options["slug"]))
        if deleted:
            self.stdout.write(f"deleted tenant {options['slug']}")
        else:
            self.stdout.write(
                f"tenant {options['slug']} has usage: suspended and its keys revoked instead"
            )

    def handle_list(self, options):
        header = ("SLUG", "STATUS", "CONCURRENT", "TPM", "RPM", "BUDGET", "PREPAID", "MODELS")
        rows = [header]
        for tenant in Tenant.objects.all():
            rows.append(
                (
                    tenant.slug,
                    tenant.status,
                    str(tenant.max_concurrent_requests),
                    str(tenant.max_tokens_per_minute),
                    str(tenant.max_requests_per_minute or "-"),
                    str(tenant.monthly_budget if tenant.monthly_budget is not None else "-"),
                    "yes" if tenant.prepaid else "no",
                    ",".join(tenant.model_allow_list) or "*",
                )
            )
        for line in format_table(rows):
            self.stdout.write(line)
