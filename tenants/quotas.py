"""A tenant's quota configuration (and its sign-in rule, `sso_required`) and its one validation
(the seed's TenantConfig.Validate).

The model, the admin, the API and the CLI all validate through `validate_tenant_config`, so a
limit is refused with the same message wherever it is set.
"""

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from saas_platform.model_ids import MODEL_ID_MAX_LENGTH

# The minor unit of the operator's currency: budgets are whole cents.
BUDGET_DECIMAL_PLACES = 2
BUDGET_MAX_DIGITS = 14

DEFAULT_MAX_CONCURRENT_REQUESTS = 8
DEFAULT_MAX_TOKENS_PER_MINUTE = 100_000
DEFAULT_QUEUE_WEIGHT = 1
MAX_QUEUE_WEIGHT = 1000


@dataclass(frozen=True)
class TenantConfig:
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_tokens_per_minute: int = DEFAULT_MAX_TOKENS_PER_MINUTE
    max_requests_per_minute: int | None = None
    model_allow_list: list[str] = field(default_factory=list)
    monthly_budget: Decimal | None = None
    # Admitted only against prepaid credits (billing.credits), as well as any budget.
    prepaid: bool = False
    # Its members sign in through the identity provider only (no password, no password reset).
    sso_required: bool = False
    # The tenant's share of a saturated model's engines against other waiting tenants.
    queue_weight: int = DEFAULT_QUEUE_WEIGHT
    # Requests that may wait in a model's queue at once; None: its concurrency limit.
    max_queued_requests: int | None = None

    @property
    def queue_bound(self) -> int:
        """How many of the tenant's requests may wait for engines at once."""
        if self.max_queued_requests is None:
            return self.max_concurrent_requests
        return self.max_queued_requests

    def model_allowed(self, model_id: str) -> bool:
        """An empty allow list permits every enabled model (the seed's ModelAllowed)."""
        return not self.model_allow_list or model_id in self.model_allow_list


def _positive_int_error(value, *, label: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{label} must be a whole number."
    if value < 1:
        return f"{label} must be at least 1."
    return None


def _allow_list_error(models) -> str | None:
    if not isinstance(models, list | tuple):
        return "Model allow list must be a list of model ids."
    seen: set[str] = set()
    for model_id in models:
        if not isinstance(model_id, str) or not model_id.strip():
            return "Model allow list contains a blank model id."
        if model_id != model_id.strip():
            return f"Model id {model_id.strip()!r} has leading or trailing spaces."
        if len(model_id) > MODEL_ID_MAX_LENGTH:
            return f"Model id {model_id[:40]!r}… is longer than {MODEL_ID_MAX_LENGTH} characters."
        if model_id in seen:
            return f"Model allow list names {model_id!r} twice."
        seen.add(model_id)
    if seen:
        unknown = _unknown_model_ids(seen)
        if unknown:
            return f"Unknown model id(s) in the allow list: {', '.join(sorted(unknown))}."
    return None


def _unknown_model_ids(model_ids: set[str]) -> set[str]:
    # The catalog is models_mgmt's, which this app does not import (nor it this one): settings
    # name the function that answers, ids in, the unknown ones out.
    return set(import_string(settings.TENANT_MODEL_CATALOG)(model_ids))


def catalog_model_ids() -> list[str]:
    """The enabled models' ids, sorted (for choosing a key's models), from the catalog named
    by TENANT_MODEL_IDS."""
    return sorted(import_string(settings.TENANT_MODEL_IDS)())


def _budget_error(budget) -> str | None:
    if budget is None:
        return None
    try:
        amount = Decimal(str(budget)) if not isinstance(budget, Decimal) else budget
    except InvalidOperation:
        return "Monthly budget must be a decimal amount."
    if isinstance(budget, float) or not amount.is_finite():
        return "Monthly budget must be a decimal amount."
    if amount < 0:
        return "Monthly budget cannot be negative."
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > BUDGET_DECIMAL_PLACES:
        return f"Monthly budget can have at most {BUDGET_DECIMAL_PLACES} decimal places."
    if amount >= Decimal(10) ** (BUDGET_MAX_DIGITS - BUDGET_DECIMAL_PLACES):
        return "Monthly budget is too large."
    return None


def _sso_required_error(required) -> str | None:
    if not isinstance(required, bool):
        return "SSO required must be true or false."
    if required and not settings.SSO_ENABLED:
        # Its members could not sign in at all.
        return "SSO required needs single sign-on configured (OIDC_ISSUER)."
    return None


def validate_tenant_config(config: TenantConfig) -> None:
    """Raise ValidationError mapping each bad field to a message that names it."""
    errors: dict[str, str] = {}
    message = _positive_int_error(config.max_concurrent_requests, label="Max concurrent requests")
    if message:
        errors["max_concurrent_requests"] = message
    message = _positive_int_error(config.max_tokens_per_minute, label="Max tokens per minute")
    if message:
        errors["max_tokens_per_minute"] = message
    if config.max_requests_per_minute is not None:
        message = _positive_int_error(
            config.max_requests_per_minute, label="Max requests per minute"
        )
        if message:
            errors["max_requests_per_minute"] = message
    message = _positive_int_error(config.queue_weight, label="Weight")
    if message is None and config.queue_weight > MAX_QUEUE_WEIGHT:
        message = f"Weight must be at most {MAX_QUEUE_WEIGHT}."
    if message:
        errors["queue_weight"] = message
    if config.max_queued_requests is not None:
        message = _positive_int_error(config.max_queued_requests, label="Max queued requests")
        if message:
            errors["max_queued_requests"] = message
    message = _allow_list_error(config.model_allow_list)
    if message:
        errors["model_allow_list"] = message
    message = _budget_error(config.monthly_budget)
    if message:
        errors["monthly_budget"] = message
    if not isinstance(config.prepaid, bool):
        errors["prepaid"] = "Prepaid must be true or false."
    message = _sso_required_error(config.sso_required)
    if message:
        errors["sso_required"] = message
    if errors:
        raise ValidationError(errors)


@dataclass(frozen=True)
class KeyLimits:
    """An API key's own limits, each only narrowing its tenant's; None (or an empty allow
    list): the tenant's alone apply."""

    max_concurrent_requests: int | None = None
    max_tokens_per_minute: int | None = None
    max_requests_per_minute: int | None = None
    monthly_budget: Decimal | None = None
    model_allow_list: list[str] = field(default_factory=list)

    @property
    def counted(self) -> bool:
        """Whether admission keeps counts for the key itself (any limit but the allow list)."""
        return any(
            value is not None
            for value in (
                self.max_concurrent_requests,
                self.max_tokens_per_minute,
                self.max_requests_per_minute,
                self.monthly_budget,
            )
        )

    def model_allowed(self, model_id: str) -> bool:
        return not self.model_allow_list or model_id in self.model_allow_list


_KEY_LIMIT_LABELS = {
    "max_concurrent_requests": "Max concurrent requests",
    "max_tokens_per_minute": "Max tokens per minute",
    "max_requests_per_minute": "Max requests per minute",
}


def validate_key_limits(limits: KeyLimits, tenant: TenantConfig) -> None:
    """Raise ValidationError mapping each bad field to a message: every limit as a tenant's
    is checked, and none may be above its tenant's (nor name a model the tenant may not use)."""
    errors: dict[str, str] = {}
    for name, label in _KEY_LIMIT_LABELS.items():
        value, ceiling = getattr(limits, name), getattr(tenant, name)
        if value is None:
            continue
        message = _positive_int_error(value, label=label)
        if message is None and ceiling is not None and value > ceiling:
            message = f"{label} of a key ({value}) cannot be above its tenant's ({ceiling})."
        if message:
            errors[name] = message
    message = _budget_error(limits.monthly_budget)
    if message is None and limits.monthly_budget is not None:
        ceiling = tenant.monthly_budget
        if ceiling is not None and Decimal(str(limits.monthly_budget)) > ceiling:
            message = (
                f"Monthly budget of a key ({limits.monthly_budget}) cannot be above its "
                f"tenant's ({ceiling})."
            )
    if message:
        errors["monthly_budget"] = message
    message = _allow_list_error(limits.model_allow_list)
    if message is None:
        outside = [m for m in limits.model_allow_list if not tenant.model_allowed(m)]
        if outside:
            message = f"The tenant may not use: {', '.join(outside)} (a key can only narrow it)."
    if message:
        errors["model_allow_list"] = message
    if errors:
        raise ValidationError(errors)
