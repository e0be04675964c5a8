"""CSV that is safe to open in a spreadsheet: the one way the platform's CSVs are written
(invoices, usage, the audit log)."""

import csv

# What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell as written: text that a spreadsheet would run as a formula gets a leading
    single quote; numbers (int, Decimal) and other text pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class SafeWriter:
    """csv.writer whose every row goes through spreadsheet_safe."""

    def __init__(self, out):
        self._writer = csv.writer(out)

    def writerow(self, values) -> None:
        self._writer.writerow([spreadsheet_safe(value) for value in values])
