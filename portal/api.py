"""Keys managed by API: a tenant's own scripts create, list, show, update, revoke and rotate its
API keys (DRF), with the services the CLI and the portal's pages use.

    GET   /api/keys                    the tenant's keys (prefixes, never a secret)
    POST  /api/keys                    issue one; the key is in this response only
    GET   /api/keys/<prefix>           one key
    PATCH /api/keys/<prefix>           change its name or expiry
    POST  /api/keys/<prefix>/revoke    revoke it at once
    POST  /api/keys/<prefix>/rotate    issue a replacement; the old one works for a grace period

Authenticated by a key of scope `manage` (`apikey create SLUG --scope manage`; an inference key
is refused here, as a manage key is on /v1/), or by a portal session (with its CSRF token), for
the tenant chosen there. Every lookup is within that tenant: another tenant's prefix is a 404.
Rate limited per tenant (KEYS_API_REQUESTS_PER_MINUTE).
"""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from billing.api import TenantApiView
from portal.access import current_membership
from saas_platform.errors import NotFound, PermissionDenied, PlatformError
from tenants import services
from tenants.api_auth import ApiKeyAuthentication, KeyRefused
from tenants.apikeys import normalize_prefix
from tenants.models import ApiKey, Tenant
from tenants.quotas import BUDGET_DECIMAL_PLACES, BUDGET_MAX_DIGITS, KeyLimits

MAX_GRACE_HOURS = 24 * 365


class NotAManageKey(PermissionDenied):
    code = "wrong_key_scope"

    def __init__(self):
        super().__init__(
            "This API key cannot manage keys: use a key of scope manage "
            "(`apikey create SLUG --scope manage`)."
        )


class UnknownKey(NotFound):
    code = "unknown_api_key"

    def __init__(self):
        # The prefix is not repeated: it may be another tenant's (a probe).
        super().__init__("No such API key.", param="prefix")


class KeyNotActive(PlatformError):
    status = 409
    code = "key_not_active"


@dataclass(frozen=True)
class KeyManager:
    """`request.auth` on this API: the tenant whose keys are managed, and the manage key when
    a key (not a session) authenticated the request."""

    tenant: Tenant
    api_key: ApiKey | None = None


class ManageKeyAuthentication(ApiKeyAuthentication):
    """A bearer key of scope `manage`. Without an Authorization header it steps aside for the
    portal session."""

    def authenticate(self, request):
        if "Authorization" not in request.headers:
            return None
        user, found = super().authenticate(request)
        if found.api_key.scope != ApiKey.Scope.MANAGE:
            raise KeyRefused(NotAManageKey())
        return user, KeyManager(tenant=found.tenant, api_key=found.api_key)


class PortalSessionAuthentication(SessionAuthentication):
    """A signed-in member's portal session, for the tenant chosen there (any member may manage
    keys, as on the portal's page); DRF checks the CSRF token."""

    def authenticate(self, request):
        found = super().authenticate(request)
        if found is None:
            return None
        membership = current_membership(request._request)
        if membership is None:
            return None
        return found[0], KeyManager(tenant=membership.tenant)


class HasKeyManager(BasePermission):
    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, KeyManager)


class PerTenantThrottle(SimpleRateThrottle):
    """KEYS_API_REQUESTS_PER_MINUTE per tenant, in the shared cache (Redis in production), so
    every server process counts together."""

    scope = "keys"

    def get_rate(self) -> str:
        return f"{settings.KEYS_API_REQUESTS_PER_MINUTE}/min"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.auth.tenant.pk}


class KeysApiView(TenantApiView):
    authentication_classes = [ManageKeyAuthentication, PortalSessionAuthentication]
    permission_classes = [HasKeyManager]
    throttle_classes = [PerTenantThrottle]
    parser_classes = [JSONParser]

    def tenant_key(self, request, prefix: str) -> ApiKey:
        found = request.auth.tenant.api_keys.filter(prefix=normalize_prefix(prefix)).first()
        if found is None:
            raise UnknownKey()
        return found


def _in_the_future(moment) -> None:
    # As the CLI (--expires-days at least 1) and the portal (today or later) allow.
    if moment is not None and moment <= timezone.now():
        raise serializers.ValidationError("The expiry must be in the future.")


class KeyLimitFields(serializers.Serializer):
    """A key's own limits (`services.KEY_LIMIT_FIELDS`), each at most its tenant's: the rule is
    tenants.quotas.validate_key_limits, applied by the service. null: the tenant's alone."""

    max_concurrent_requests = serializers.IntegerField(required=False, allow_null=True)
    max_tokens_per_minute = serializers.IntegerField(required=False, allow_null=True)
    max_requests_per_minute = serializers.IntegerField(required=False, allow_null=True)
    monthly_budget = serializers.DecimalField(
        max_digits=BUDGET_MAX_DIGITS, decimal_places=BUDGET_DECIMAL_PLACES, required=False,
        allow_null=True,
    )  # fmt: skip
    model_allow_list = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Empty: the tenant's models."
    )


class KeySerializer(KeyLimitFields):
    id = serializers.CharField(source="display_prefix", help_text="The key's prefix, sk-...")
    object = serializers.SerializerMethodField()
    name = serializers.CharField()
    scope = serializers.ChoiceField(choices=ApiKey.Scope.choices)
    state = serializers.ChoiceField(choices=ApiKey.State.choices)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    replaced_by = serializers.SerializerMethodField()

    def get_object(self, api_key) -> str:
        return "api_key"

    def get_replaced_by(self, api_key) -> str | None:
        return api_key.replaced_by.display_prefix if api_key.replaced_by_id else None


class IssuedKeySerializer(KeySerializer):
    key = serializers.SerializerMethodField(help_text="The key itself: shown this once only.")

    def get_key(self, api_key) -> str:
        return self.context["plaintext"]


def _issued(issued: services.IssuedKey) -> dict:
    return IssuedKeySerializer(issued.api_key, context={"plaintext": issued.plaintext}).data


def _no_store(response: Response) -> Response:
    response["Cache-Control"] = "no-store"  # a response with a key in it is never cached
    return response


class KeyListApi(KeysApiView):
    class InputSerializer(KeyLimitFields):
        name = serializers.CharField(max_length=100, allow_blank=True, default="")
        expires_at = serializers.DateTimeField(
            required=False, allow_null=True, default=None, validators=[_in_the_future]
        )
        scope = serializers.ChoiceField(
            choices=ApiKey.Scope.choices, default=ApiKey.Scope.INFERENCE
        )

    def get(self, request):
        keys = request.auth.tenant.api_keys.select_related("replaced_by")
        return Response({"object": "list", "data": KeySerializer(keys, many=True).data})

    def post(self, request):
        given = self.InputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        options = dict(given.validated_data)
        limits = KeyLimits(**{field: options.pop(field) for field in services.KEY_LIMIT_FIELDS
                              if field in options})  # fmt: skip
        issued = services.apikey_issue(tenant=request.auth.tenant, limits=limits, **options)
        return _no_store(Response(_issued(issued), status=status.HTTP_201_CREATED))


class KeyDetailApi(KeysApiView):
    class InputSerializer(KeyLimitFields):
        # One field per setting `services.apikey_update` takes; a field given is changed.
        name = serializers.CharField(max_length=100, allow_blank=True, required=False)
        expires_at = serializers.DateTimeField(
            required=False, allow_null=True, validators=[_in_the_future]
        )

    def get(self, request, prefix: str):
        return Response(KeySerializer(self.tenant_key(request, prefix)).data)

    def patch(self, request, prefix: str):
        api_key = self.tenant_key(request, prefix)
        given = self.InputSerializer(data=request.data, partial=True)
        given.is_valid(raise_exception=True)
        api_key = services.apikey_update(api_key=api_key, **given.validated_data)
        return Response(KeySerializer(api_key).data)


class KeyRevokeApi(KeysApiView):
    def post(self, request, prefix: str):
        api_key = services.apikey_revoke(api_key=self.tenant_key(request, prefix))
        return Response(KeySerializer(api_key).data)


class KeyRotateApi(KeysApiView):
    class InputSerializer(serializers.Serializer):
        grace_hours = serializers.IntegerField(
            min_value=0,
            max_value=MAX_GRACE_HOURS,
            required=False,
            help_text="Hours the old key keeps working (default: APIKEY_ROTATION_GRACE_SECONDS).",
        )

    def post(self, request, prefix: str):
        api_key = self.tenant_key(request, prefix)
        given = self.InputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        hours = given.validated_data.get("grace_hours")
        try:
            issued = services.apikey_rotate(
                api_key=api_key, grace=None if hours is None else timedelta(hours=hours)
            )
        except ValueError as error:
            raise KeyNotActive(str(error)) from None
        api_key.refresh_from_db()
        body = {"replaced": KeySerializer(api_key).data, **_issued(issued)}
        return _no_store(Response(body, status=status.HTTP_201_CREATED))
