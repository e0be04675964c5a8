from billing.models import Invoice, UsageRecord


def tenant_has_ledger(tenant) -> bool:
    return (
        UsageRecord.objects.filter(tenant=tenant).exists()
        or Invoice.objects.filter(tenant=tenant).exists()
    )
