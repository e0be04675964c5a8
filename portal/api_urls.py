"""Keys managed by API, mounted under /api/ next to billing's (see portal.api)."""

from django.urls import path

from portal import api, api_schema  # noqa: F401 - api_schema registers the schema's extensions

app_name = "keys"

urlpatterns = [
    path("keys", api.KeyListApi.as_view(), name="list"),
    path("keys/<str:prefix>", api.KeyDetailApi.as_view(), name="detail"),
    path("keys/<str:prefix>/revoke", api.KeyRevokeApi.as_view(), name="revoke"),
    path("keys/<str:prefix>/rotate", api.KeyRotateApi.as_view(), name="rotate"),
]
