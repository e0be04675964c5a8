"""Database triggers that make the ledger append-only and finalized invoices immutable, for
every writer: the ORM, the admin, a `queryset.update()`, raw SQL."""

from django.db import migrations

POSTGRES = """
CREATE OR REPLACE FUNCTION billing_refuse_change() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION '%: % is not allowed (append-only / finalized)', TG_TABLE_NAME, TG_OP;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER billing_usagerecord_append_only BEFORE UPDATE OR DELETE ON billing_usagerecord
  FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
CREATE TRIGGER billing_invoice_immutable BEFORE UPDATE OR DELETE ON billing_invoice
  FOR EACH ROW WHEN (OLD.status = 'final') EXECUTE FUNCTION billing_refuse_change();
CREATE TRIGGER billing_invoiceline_immutable BEFORE UPDATE OR DELETE ON billing_invoiceline
  FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
CREATE TRIGGER billing_creditnote_immutable BEFORE UPDATE OR DELETE ON billing_creditnote
  FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
"""

POSTGRES_REVERSE = """
DROP TRIGGER IF EXISTS billing_usagerecord_append_only ON billing_usagerecord;
DROP TRIGGER IF EXISTS billing_invoice_immutable ON billing_invoice;
DROP TRIGGER IF EXISTS billing_invoiceline_immutable ON billing_invoiceline;
DROP TRIGGER IF EXISTS billing_creditnote_immutable ON billing_creditnote;
DROP FUNCTION IF EXISTS billing_refuse_change();
"""

SQLITE = [
    f"CREATE TRIGGER billing_{table}_{op.lower()}_refused BEFORE {op} ON billing_{table}"
    f"{condition} BEGIN SELECT RAISE(ABORT, 'billing_{table}: {op} is not allowed'); END;"
    for table, condition in [
        ("usagerecord", ""),
        ("invoice", " WHEN OLD.status = 'final'"),
        ("invoiceline", ""),
        ("creditnote", ""),
    ]
    for op in ("UPDATE", "DELETE")
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_REVERSE)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            name = statement.split()[2]
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name};")


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
