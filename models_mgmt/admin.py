"""The operator's admin for models, nodes and placements.

Load, evict and pin queue the node workers' Celery tasks (models_mgmt.tasks, on each node's
own queue) through the same calls the CLI makes; the node page shows each placement's state
and refreshes it (htmx) while a load or an eviction runs, so the outcome is seen there.
"""

import logging

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, Prefetch, Q, Sum
from django.db.models.functions import Coalesce
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.module_loading import import_string
from redis.exceptions import RedisError

from models_mgmt import placements, services
from models_mgmt.models import MEMORY_HOLDING_STATES, Node, Placement, ServedModel
from models_mgmt.tasks import evict_model

logger = logging.getLogger(__name__)

HOLDING = sorted(MEMORY_HOLDING_STATES)
SETTLING = {Placement.State.QUEUED, Placement.State.LOADING, Placement.State.DRAINING,
            Placement.State.UNLOADING}  # fmt: skip

WATCH_POLLS = 15  # polls (2 s apart) of the node page after an action


class AdminAssets:
    css = {"all": ["saas_platform/admin.css"]}
    js = ["vendor/htmx/htmx.min.js"]


def _badge(state: str):
    return format_html('<span class="admin-badge admin-badge-{}">{}</span>', state,
                       Placement.State(state).label)  # fmt: skip


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def memory_bar(used: int, budget: int):
    """Used against budget bytes as a bar, with the figures as text beside it."""
    share = used / budget * 100 if budget else 100.0
    return format_html(
        '<div class="admin-bar{}" role="meter" aria-valuemin="0" aria-valuemax="{}" '
        'aria-valuenow="{}" aria-label="Memory used"><span style="width: {}%"></span></div>'
        '<span class="admin-bar-caption">{} of {} ({}%)</span>',
        " admin-bar-high" if share >= 90 else "", budget, used, f"{min(share, 100):.1f}",
        _bytes(used), _bytes(budget), f"{share:.0f}",
    )  # fmt: skip


def queue_evict(placement: Placement) -> None:
    """Ask the node's worker to unload the model once its requests have ended."""
    evict_model.apply_async(args=[placement.node.name, placement.model.model_id],
                            queue=placement.node.queue)  # fmt: skip


def _queue_load(request, model: ServedModel, node: Node | None = None, pin: bool = False):
    try:
        chosen = placements.placement_request_load(model=model, node=node, pin=pin)
    except placements.PlacementError as error:
        messages.error(request, f"{model.model_id}: {error.message}")
        return
    except Exception as error:  # noqa: BLE001 - an eager task's failure is the outcome to show
        messages.error(request, f"Load of {model.model_id} failed: {error}")
        return
    messages.success(request, f"Load of {model.model_id} queued on {chosen.name}.")


def _queue_evict(request, placement: Placement) -> None:
    try:
        queue_evict(placement)
    except placements.PlacementError as error:  # only when tasks run eagerly (no broker)
        messages.error(request, f"{placement.model}: {error.message}")
        return
    messages.success(request, f"Evict of {placement.model} queued on {placement.node}.")


def _queue_stats(model_ids) -> dict[str, dict]:
    """The fair queue of each model now (the gateway's, named by settings.MODEL_QUEUE_STATS);
    empty while Redis does not answer, so the page still renders."""
    try:
        return import_string(settings.MODEL_QUEUE_STATS)(list(model_ids))
    except (RedisError, OSError) as error:
        logger.warning("queue figures unavailable: %s", error)
        return {}


def _queue_text(stats: dict | None) -> str:
    if not stats:
        return "—"
    return f"{stats['waiting']} waiting · mean wait {stats['mean_wait_ms']} ms of {stats['served']}"


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "engine", "task", "vram_display", "capacity", "queue", "pinned",
                    "enabled", "placed"]  # fmt: skip
    readonly_fields = ["queue"]
    list_filter = ["engine", "task", "enabled", "pinned"]
    search_fields = ["model_id", "upstream_model"]
    actions = ["load", "pin", "unpin"]
    Media = AdminAssets

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("placements__node")

    @admin.display(description="VRAM", ordering="vram_bytes")
    def vram_display(self, model):
        return _bytes(model.vram_bytes)

    @admin.display(description="capacity", ordering="max_concurrent_per_replica")
    def capacity(self, model):
        per = model.max_concurrent_per_replica
        return f"{per} per replica" if per else "unlimited"

    @admin.display(description="queue (waiting now, mean wait)")
    def queue(self, model):
        if not model.pk or not model.max_concurrent_per_replica:
            return "—"
        return _queue_text(_queue_stats([model.model_id]).get(model.model_id))

    @admin.display(description="placements")
    def placed(self, model):
        chips = format_html_join(" ", "{} {}", ((p.node.name, _badge(p.state))
                                                for p in model.placements.all()))  # fmt: skip
        return format_html('<span class="admin-chips">{}</span>', chips) if chips else "—"

    def save_model(self, request, obj, form, change):
        services.model_save(model=obj)

    @admin.action(description="Load on the node with the most room", permissions=["change"])
    def load(self, request, queryset):
        for model in queryset:
            _queue_load(request, model)

    @admin.action(description="Pin (never evict)", permissions=["change"])
    def pin(self, request, queryset):
        for model in queryset:
            services.model_set_pinned(model=model, pinned=True)
        messages.success(request, f"Pinned {queryset.count()} model(s).")

    @admin.action(description="Unpin", permissions=["change"])
    def unpin(self, request, queryset):
        for model in queryset:
            services.model_set_pinned(model=model, pinned=False)
        messages.success(request, f"Unpinned {queryset.count()} model(s).")


class PlacementInline(admin.TabularInline):
    model = Placement
    extra = 0
    can_delete = False
    fields = ["model", "state", "vram_bytes", "measured_bytes", "pinned", "endpoint_url",
              "loaded_at", "failure"]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "enabled", "last_heartbeat", "memory", "models"]
    fields = ["name", "vram_budget_bytes", "enabled", "last_heartbeat", "created_at"]
    readonly_fields = ["last_heartbeat", "created_at"]
    change_form_template = "admin/models_mgmt/node/change_form.html"
    Media = AdminAssets

    def save_model(self, request, obj, form, change):
        values = {field: getattr(obj, field) for field in ("name", "vram_budget_bytes", "enabled")}
        if change:
            placements.node_update(node=obj, **values)
        else:
            saved = placements.node_add(
                name=obj.name, vram_bytes=obj.vram_budget_bytes, enabled=obj.enabled
            )
            obj.pk = saved.pk

    def get_queryset(self, request):
        placed = Placement.objects.select_related("model").order_by("model__model_id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                used=Coalesce(Sum("placements__vram_bytes",
                                  filter=Q(placements__state__in=HOLDING)), 0),
                placement_count=Count("placements"),
            )
            .prefetch_related(Prefetch("placements", queryset=placed))
        )  # fmt: skip

    @admin.display(description="memory used / budget", ordering="used")
    def memory(self, node):
        return memory_bar(node.used, node.vram_budget_bytes)

    @admin.display(description="models")
    def models(self, node):
        chips = format_html_join(" ", "{} {}", ((p.model.model_id, _badge(p.state))
                                                for p in node.placements.all()))  # fmt: skip
        return format_html('<span class="admin-chips">{}</span>', chips) if chips else "—"

    def get_urls(self):
        view = self.admin_site.admin_view
        own = [
            path("<int:pk>/placements/", view(self.placements_view),
                 name="models_mgmt_node_placements"),
            path("<int:pk>/load/", view(self.load_view), name="models_mgmt_node_load"),
            path("<int:pk>/placements/<int:placement_pk>/<str:verb>/", view(self.placement_view),
                 name="models_mgmt_node_placement"),
        ]  # fmt: skip
        return own + super().get_urls()

    def _node_context(self, request, node: Node) -> dict:
        rows = list(node.placements.select_related("model").order_by("model__model_id"))
        used = sum(p.vram_bytes for p in rows if p.holds_memory)
        queued = [p.model.model_id for p in rows if p.model.max_concurrent_per_replica]
        queues = _queue_stats(queued) if queued else {}
        for placement in rows:
            placement.queue = _queue_text(queues.get(placement.model.model_id))
        # After an action the page keeps polling a while (`watch` polls), even before the
        # worker has taken the task and the placement's state has moved.
        try:
            watch = max(0, min(WATCH_POLLS, int(request.GET.get("watch", 0))))
        except ValueError:
            watch = 0
        settling = any(p.state in SETTLING for p in rows)
        url = reverse("admin:models_mgmt_node_placements", args=[node.pk])
        return {
            "node": node,
            "placements": rows,
            "bar": memory_bar(used, node.vram_budget_bytes),
            "settling": settling,
            "polling": settling or watch > 0,
            "placements_url": f"{url}?watch={max(0, watch - 1)}",
        }

    def change_view(self, request, object_id, form_url="", extra_context=None):
        node = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if node is not None:
            extra_context.update(self._node_context(request, node))
            extra_context["load_url"] = reverse("admin:models_mgmt_node_load", args=[node.pk])
            extra_context["loadable"] = ServedModel.objects.filter(enabled=True).exclude(
                placements__node=node, placements__state__in=HOLDING
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def placements_view(self, request, pk):
        """The placements table alone: htmx polls it while a load or eviction settles."""
        node = get_object_or_404(Node, pk=pk)
        if not self.has_view_permission(request, node):
            return HttpResponseRedirect(reverse("admin:index"))
        context = {**self.admin_site.each_context(request), **self._node_context(request, node)}
        return TemplateResponse(request, "admin/models_mgmt/node/placements.html", context)

    def _back(self, node: Node):
        url = reverse("admin:models_mgmt_node_change", args=[node.pk])
        return HttpResponseRedirect(f"{url}?watch={WATCH_POLLS}")

    def load_view(self, request, pk):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        node = get_object_or_404(Node, pk=pk)
        if not self.has_change_permission(request, node):
            return HttpResponseRedirect(reverse("admin:index"))
        model = ServedModel.objects.filter(pk=request.POST.get("model")).first()
        if model is None:
            messages.error(request, "Choose a model to load.")
        else:
            _queue_load(request, model, node, pin=request.POST.get("pin") == "on")
        return self._back(node)

    def placement_view(self, request, pk, placement_pk, verb):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        node = get_object_or_404(Node, pk=pk)
        if not self.has_change_permission(request, node):
            return HttpResponseRedirect(reverse("admin:index"))
        placement = get_object_or_404(node.placements.select_related("model", "node"),
                                      pk=placement_pk)  # fmt: skip
        if verb == "evict":
            _queue_evict(request, placement)
        elif verb in ("pin", "unpin"):
            services.model_set_pinned(model=placement.model, pinned=verb == "pin")
            messages.success(request, f"{placement.model} {verb}ned.")
        elif verb == "retry":
            _queue_load(request, placement.model, node, pin=placement.pinned)
        else:
            messages.error(request, f"Unknown action {verb!r}.")
        return self._back(node)


@admin.register(Placement)
class PlacementAdmin(admin.ModelAdmin):
    list_display = ["model", "node", "state_badge", "vram_bytes", "measured_bytes", "pinned",
                    "loaded_at", "failure"]  # fmt: skip
    list_select_related = ["model", "node"]
    list_filter = ["state", "node"]
    readonly_fields = ["node", "model", "state", "endpoint_url", "vram_bytes", "measured_bytes",
                       "measured_source", "pinned", "failure", "loaded_at", "last_used_at",
                       "updated_at"]  # fmt: skip
    actions = ["evict"]
    Media = AdminAssets

    def has_add_permission(self, request):
        return False

    @admin.display(description="state", ordering="state")
    def state_badge(self, placement):
        return _badge(placement.state)

    @admin.action(description="Evict (once its requests have ended)", permissions=["change"])
    def evict(self, request, queryset):
        for placement in queryset.select_related("node", "model"):
            _queue_evict(request, placement)
