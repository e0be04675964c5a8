"""Names people give things (tenants, keys, accounts) and others read: no control characters and
no bidirectional-text controls. A right-to-left override (U+202E) makes `invoice<U+202E>gpj.exe`
display as `invoiceexe.jpg`, and such names reach other people's screens (the admin, members'
pages, emails, CSVs)."""

import unicodedata

from django.core.exceptions import ValidationError

# Unicode's explicit directional formatting characters (UAX #9): embeddings, overrides, isolates
# and the marks.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def validate_display_name(value: str) -> None:
    """ValidationError if `value` holds a control character (tabs and newlines too) or a
    bidirectional-text control. Joiners (U+200C, U+200D), which scripts and emoji need, pass."""
    for char in value:
        if char in BIDI_CONTROLS or unicodedata.category(char) == "Cc":
            raise ValidationError(
                f"Names cannot contain control characters or text-direction controls "
                f"(found U+{ord(char):04X}).",
                code="invalid_characters",
            )
