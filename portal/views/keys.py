"""API keys: the full key is shown once, in the response to the request that made it (never
stored, never redirected through the session), with caching turned off."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from portal.access import member_required
from portal.forms import ApiKeyCreateForm, KeyLimitsForm
from tenants import services
from tenants.models import ApiKey
from tenants.quotas import catalog_model_ids


def _keys_page(request, form, issued=None, *, status=200):
    context = {"form": form, "keys": request.tenant.api_keys.all(), "issued": issued}
    response = render(request, "portal/keys.html", context, status=status)
    if issued is not None:
        response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@member_required
def key_list(request):
    if request.method == "GET":
        return _keys_page(request, ApiKeyCreateForm())
    form = ApiKeyCreateForm(request.POST)
    if not form.is_valid():
        return _keys_page(request, form, status=400)
    issued = services.apikey_issue(
        tenant=request.tenant, name=form.cleaned_data["name"], expires_at=form.expires_at
    )
    return _keys_page(request, ApiKeyCreateForm(), issued)


def _tenant_key(request, pk: int) -> ApiKey:
    return get_object_or_404(ApiKey, pk=pk, tenant=request.tenant)


@require_POST
@member_required
def key_revoke(request, pk: int):
    api_key = services.apikey_revoke(api_key=_tenant_key(request, pk))
    if request.htmx:
        return render(request, "portal/_key_row.html", {"key": api_key})
    messages.success(request, f"{api_key.display_prefix}… is revoked; calls with it are refused.")
    return redirect("portal:keys")


@require_POST
@member_required
def key_rotate(request, pk: int):
    api_key = _tenant_key(request, pk)
    try:
        issued = services.apikey_rotate(api_key=api_key)
    except ValueError as error:
        messages.error(request, str(error))
        return redirect("portal:keys")
    api_key.refresh_from_db()
    messages.success(
        request,
        f"{api_key.display_prefix}… keeps working until "
        f"{api_key.expires_at:%Y-%m-%d %H:%M} UTC, so you can switch your clients over.",
    )
    return _keys_page(request, ApiKeyCreateForm(), issued)


def _models_for(tenant) -> list[str]:
    """The models a key of the tenant may be narrowed to: the tenant's allow list, or every
    model of the catalog (named by the same setting the tenant's validation uses)."""
    return list(tenant.model_allow_list) or catalog_model_ids()


@require_http_methods(["GET", "POST"])
@member_required(owner=True)
def key_limits(request, pk: int):
    api_key = _tenant_key(request, pk)
    models = _models_for(request.tenant)
    if request.method == "GET":
        form = KeyLimitsForm.for_key(api_key, models)
        return render(request, "portal/key_limits.html", {"key": api_key, "form": form})
    form = KeyLimitsForm.for_key(api_key, models, data=request.POST)
    if not form.is_valid():
        context = {"key": api_key, "form": form}
        return render(request, "portal/key_limits.html", context, status=400)
    limits = form.limits
    services.apikey_update(api_key=api_key, **{
        field: getattr(limits, field) for field in services.KEY_LIMIT_FIELDS})  # fmt: skip
    messages.success(request, f"{api_key.display_prefix}… now has the limits you set.")
    return redirect("portal:keys")
