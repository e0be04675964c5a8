"""A model's public id, what clients send as `model`: the catalog's ids (models_mgmt), the
tenants' allow lists (tenants) and the billing rows that name a model (billing) share its rule,
and those apps do not all import each other.

An id is letters, digits and `.`, `_`, `-`, `/`, `:`, starting with a letter or digit
(`llama-3.1-8b-instruct`, `meta-llama/Llama-3-8B`, `qwen2.5:7b`): the characters engines and
model hubs use, and none that a spreadsheet reads as a formula (`=HYPERLINK(...)` was accepted
and reached the CSV exports), a shell or a URL treats specially, or that hides or reorders
text (spaces, control and bidi characters).
"""

import re

from django.core.validators import RegexValidator

MODEL_ID_MAX_LENGTH = 200
MODEL_ID_CHARACTERS = "letters, digits and . _ - / : (starting with a letter or digit)"
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")

validate_model_id = RegexValidator(
    regex=rf"\A{MODEL_ID_PATTERN.pattern}\Z",
    message=f"A model id may only have {MODEL_ID_CHARACTERS}.",
    code="invalid_model_id",
)


def is_model_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MODEL_ID_MAX_LENGTH
        and MODEL_ID_PATTERN.fullmatch(value) is not None
    )
