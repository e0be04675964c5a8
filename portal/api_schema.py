"""/api/keys in the management API's OpenAPI schema (drf-spectacular): each operation's body,
answers and refusals, described from outside the views as billing/api_schema.py does."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import serializers

from billing.api_schema import _error
from portal import api

PREFIX = OpenApiParameter(
    "prefix", str, OpenApiParameter.PATH, description="The key's prefix as listed: sk-AbC12345."
)
REFUSALS = {
    401: _error("Missing, malformed, unknown, revoked or expired key (`invalid_api_key`)."),
    403: _error(
        "Not a key of scope manage (`wrong_key_scope`), a suspended tenant "
        "(`tenant_suspended`), or a session without its CSRF token."
    ),
    405: _error("Not a method of this path (`method_not_allowed`)."),
    415: _error("The body is not JSON (`unsupported_media_type`)."),
    429: _error("Over KEYS_API_REQUESTS_PER_MINUTE for the tenant (`throttled`)."),
}
BAD_BODY = {400: _error("A field is missing or invalid; `param` names it.")}
UNKNOWN = {404: _error("No key with this prefix in the tenant (`unknown_api_key`).")}

# Each view's nested InputSerializer would be the component "Input": name them apart.
for view, component in ((api.KeyListApi, "KeyCreate"), (api.KeyDetailApi, "KeyUpdate"),
                        (api.KeyRotateApi, "KeyRotate")):  # fmt: skip
    extend_schema_serializer(component_name=component)(view.InputSerializer)


class ManageKeyScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.ManageKeyAuthentication"
    name = "manageKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A key of scope manage (`apikey create SLUG --scope manage`).",
        }


class PortalSessionScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.PortalSessionAuthentication"
    name = "portalSession"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "A portal owner's session, with its CSRF token in X-CSRFToken.",
        }


class KeyListSchema(OpenApiViewExtension):
    target_class = "portal.api.KeyListApi"

    def view_replacement(self):
        listing = type(
            "KeyList",
            (serializers.Serializer,),
            {
                "object": serializers.ChoiceField(choices=["list"]),
                "data": api.KeySerializer(many=True),
            },
        )

        @extend_schema_view(
            get=extend_schema(
                operation_id="keys_list",
                summary="The tenant's API keys (prefixes only, never a secret)",
                responses={200: listing, **REFUSALS},
            ),
            post=extend_schema(
                operation_id="keys_create",
                summary="Issue a key; the key itself is in this response only",
                request=self.target_class.InputSerializer,
                responses={201: api.IssuedKeySerializer, **BAD_BODY, **REFUSALS},
            ),
        )
        class Fixed(self.target_class):
            pass

        return Fixed


class KeyDetailSchema(OpenApiViewExtension):
    target_class = "portal.api.KeyDetailApi"

    def view_replacement(self):
        @extend_schema_view(
            get=extend_schema(
                operation_id="keys_retrieve",
                summary="One key",
                parameters=[PREFIX],
                responses={200: api.KeySerializer, **UNKNOWN, **REFUSALS},
            ),
            patch=extend_schema(
                operation_id="keys_update",
                summary="Change a key's name or expiry (the fields given)",
                parameters=[PREFIX],
                request=self.target_class.InputSerializer,
                responses={200: api.KeySerializer, **BAD_BODY, **UNKNOWN, **REFUSALS},
            ),
        )
        class Fixed(self.target_class):
            pass

        return Fixed


class KeyRevokeSchema(OpenApiViewExtension):
    target_class = "portal.api.KeyRevokeApi"

    def view_replacement(self):
        @extend_schema_view(
            post=extend_schema(
                operation_id="keys_revoke",
                summary="Revoke a key at once (revoking a revoked key changes nothing)",
                parameters=[PREFIX],
                request=None,
                responses={200: api.KeySerializer, **UNKNOWN, **REFUSALS},
            ),
        )
        class Fixed(self.target_class):
            pass

        return Fixed


class KeyRotateSchema(OpenApiViewExtension):
    target_class = "portal.api.KeyRotateApi"

    def view_replacement(self):
        rotated = type(
            "RotatedKey",
            (api.IssuedKeySerializer,),
            {"replaced": api.KeySerializer(help_text="The old key, with its new expiry.")},
        )

        @extend_schema_view(
            post=extend_schema(
                operation_id="keys_rotate",
                summary="Issue a replacement; the old key works for a grace period, then expires",
                parameters=[PREFIX],
                request=self.target_class.InputSerializer,
                responses={
                    201: rotated,
                    409: _error("Only active keys rotate (`key_not_active`)."),
                    **BAD_BODY,
                    **UNKNOWN,
                    **REFUSALS,
                },
            ),
        )
        class Fixed(self.target_class):
            pass

        return Fixed
