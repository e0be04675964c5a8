"""A basic operator admin for tenants, members and keys. Keys are read-only but for revoke:
their secret is never shown after creation (the CLI and, later, the portal issue keys)."""

from django.contrib import admin, messages

from tenants import services
from tenants.models import ApiKey, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ["display_prefix", "name", "state", "created_at", "expires_at", "last_used_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "status",
        "max_concurrent_requests",
        "max_tokens_per_minute",
        "max_requests_per_minute",
        "monthly_budget",
        "created_at",
    ]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    readonly_fields = ["status", "created_at"]
    inlines = [MembershipInline, ApiKeyInline]
    actions = ["suspend", "resume"]

    def save_model(self, request, obj, form, change):
        # The form already ran Tenant.clean (validate_tenant_config); saving through the
        # services keeps cache invalidation in one place.
        if change:
            fields = {name: getattr(obj, name) for name in services.CONFIG_FIELDS}
            services.tenant_update(tenant=obj, name=obj.name, **fields)
        else:
            fields = {name: getattr(obj, name) for name in services.CONFIG_FIELDS}
            saved = services.tenant_register(slug=obj.slug, name=obj.name, **fields)
            obj.pk = saved.pk

    @admin.action(description="Suspend selected tenants")
    def suspend(self, request, queryset):
        for tenant in queryset:
            services.tenant_suspend(tenant=tenant)
        messages.success(request, f"Suspended {queryset.count()} tenant(s).")

    @admin.action(description="Resume selected tenants")
    def resume(self, request, queryset):
        for tenant in queryset:
            services.tenant_resume(tenant=tenant)
        messages.success(request, f"Resumed {queryset.count()} tenant(s).")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "display_prefix",
        "name",
        "tenant",
        "state",
        "created_at",
        "last_used_at",
        "expires_at",
    ]
    list_filter = ["tenant", "revoked_at"]
    search_fields = ["prefix", "name", "tenant__slug"]
    fields = [
        "display_prefix",
        "name",
        "tenant",
        "state",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "replaced_by",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="prefix")
    def display_prefix(self, obj):
        return obj.display_prefix

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            services.apikey_revoke(api_key=api_key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__slug"]
    autocomplete_fields = ["user", "tenant"]
