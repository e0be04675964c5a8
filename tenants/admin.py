"""The operator's admin for members and keys, and the inlines of the tenant's page (whose admin
is billing.admin_tenants: it shows the tenant's usage, and this app does not import billing).

Every change goes through tenants.services (caches forgotten). Keys are read-only but for
revoke: their secret is never shown after creation and their digest never.
"""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.db.models import Q
from django.utils import timezone
from django.utils.html import format_html

from saas_platform.text import validate_display_name
from tenants import services
from tenants.models import ApiKey, Membership


def badge(state: str, label: str):
    return format_html('<span class="admin-badge admin-badge-{}">{}</span>', state, label)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ["display_prefix", "name", "key_state", "created_at", "expires_at", "last_used_at"]
    readonly_fields = fields
    show_change_link = True
    verbose_name_plural = "API keys (read-only; revoke from the key's page)"

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="state")
    def key_state(self, api_key):
        return badge(api_key.state, ApiKey.State(api_key.state).label)


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return ApiKey.State.choices

    def queryset(self, request, queryset):
        now = timezone.now()
        expired = Q(expires_at__isnull=False, expires_at__lte=now)
        if self.value() == ApiKey.State.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == ApiKey.State.EXPIRED:
            return queryset.filter(expired, revoked_at__isnull=True)
        if self.value() == ApiKey.State.ACTIVE:
            return queryset.filter(revoked_at__isnull=True).exclude(expired)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["display_prefix", "name", "tenant", "scope", "created_at", "last_used_at",
                    "expires_at", "key_state", "monthly_budget"]  # fmt: skip
    list_select_related = ["tenant"]
    list_filter = [KeyStateFilter, "scope", "tenant"]
    search_fields = ["prefix", "name", "tenant__slug"]
    # Never `digest`: not on the page, not in the form, not in a hidden field.
    readonly_fields = ["display_prefix", "name", "tenant", "scope", "key_state", "created_at",
                       "expires_at", "revoked_at", "last_used_at", "replaced_by"]  # fmt: skip
    # The key's own limits are the only thing changed here, validated as the CLI and the
    # portal do (ApiKey.clean: tenants.quotas.validate_key_limits).
    fieldsets = [
        (None, {"fields": readonly_fields}),
        ("Limits of this key (each at most its tenant's; empty: the tenant's)",
         {"fields": list(services.KEY_LIMIT_FIELDS)}),
    ]  # fmt: skip
    actions = ["revoke"]

    class Media:
        css = {"all": ["saas_platform/admin.css"]}

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        changed = {field: form.cleaned_data[field] for field in services.KEY_LIMIT_FIELDS}
        services.apikey_update(api_key=obj, **changed)

    @admin.display(description="prefix", ordering="prefix")
    def display_prefix(self, obj):
        return obj.display_prefix

    @admin.display(description="state")
    def key_state(self, api_key):
        return badge(api_key.state, ApiKey.State(api_key.state).label)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        keys = list(queryset)
        for api_key in keys:
            services.apikey_revoke(api_key=api_key)
        messages.success(request, f"Revoked {len(keys)} key(s): they are refused at once.")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_select_related = ["user", "tenant"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__slug"]
    autocomplete_fields = ["user", "tenant"]

    def save_model(self, request, obj, form, change):
        saved = services.membership_set(tenant=obj.tenant, user=obj.user, role=obj.role)
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        services.membership_remove(membership=obj)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("tenant"):
            services.membership_remove(membership=membership)


# --- people: the accounts members sign in with -----------------------------------------------


class _CheckedNames:
    """Account names reach other members' pages and emails: no control or text-direction
    characters (saas_platform/text.py). Usernames already allow only letters, digits and
    @.+-_ (Django's validator)."""

    def _clean_name(self, field: str) -> str:
        value = self.cleaned_data.get(field) or ""
        validate_display_name(value)
        return value

    def clean_first_name(self):
        return self._clean_name("first_name")

    def clean_last_name(self):
        return self._clean_name("last_name")


class MemberChangeForm(_CheckedNames, UserChangeForm):
    pass


class MemberCreationForm(_CheckedNames, UserCreationForm):
    pass


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class MemberUserAdmin(UserAdmin):
    form = MemberChangeForm
    add_form = MemberCreationForm
