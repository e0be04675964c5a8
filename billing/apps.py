from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Usage ledger, prices and invoices; built in the billing issue."""

    name = "billing"
