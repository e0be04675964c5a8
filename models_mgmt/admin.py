"""A basic operator admin for models, nodes and placements; actions queue the node workers'
tasks (the UI issue makes these pages pleasant)."""

from django.contrib import admin, messages

from models_mgmt import placements, services
from models_mgmt.models import Node, Placement, ServedModel
from models_mgmt.tasks import evict_model


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "engine", "task", "vram_bytes", "pinned", "enabled"]
    list_filter = ["engine", "task", "enabled", "pinned"]
    search_fields = ["model_id", "upstream_model"]
    actions = ["load", "pin", "unpin"]

    @admin.action(description="Load on the node with the most room")
    def load(self, request, queryset):
        for model in queryset:
            try:
                node = placements.placement_request_load(model=model)
            except placements.PlacementError as error:
                messages.error(request, f"{model.model_id}: {error.message}")
                continue
            messages.success(request, f"Load of {model.model_id} queued on {node.name}.")

    @admin.action(description="Pin (never evict)")
    def pin(self, request, queryset):
        for model in queryset:
            services.model_set_pinned(model=model, pinned=True)

    @admin.action(description="Unpin")
    def unpin(self, request, queryset):
        for model in queryset:
            services.model_set_pinned(model=model, pinned=False)


class PlacementInline(admin.TabularInline):
    model = Placement
    extra = 0
    can_delete = False
    fields = ["model", "state", "vram_bytes", "pinned", "endpoint_url", "loaded_at", "failure"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "vram_budget_bytes", "used_bytes", "last_heartbeat", "enabled"]
    inlines = [PlacementInline]

    @admin.display(description="used bytes")
    def used_bytes(self, node):
        return sum(p.vram_bytes for p in node.placements.all() if p.holds_memory)


@admin.register(Placement)
class PlacementAdmin(admin.ModelAdmin):
    list_display = ["model", "node", "state", "vram_bytes", "pinned", "loaded_at", "failure"]
    list_filter = ["state", "node"]
    readonly_fields = ["node", "model", "state", "endpoint_url", "vram_bytes", "pinned",
                       "failure", "loaded_at", "last_used_at", "updated_at"]  # fmt: skip
    actions = ["evict"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Evict (once its requests have ended)")
    def evict(self, request, queryset):
        for placement in queryset.select_related("node", "model"):
            evict_model.apply_async(args=[placement.node.name, placement.model.model_id],
                                    queue=placement.node.queue)  # fmt: skip
            messages.success(request, f"Evict of {placement.model} queued on {placement.node}.")
