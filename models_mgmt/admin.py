from django.contrib import admin

from models_mgmt.models import ServedModel


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "engine", "task", "base_url", "upstream_model", "enabled"]
    list_filter = ["engine", "task", "enabled"]
    search_fields = ["model_id", "upstream_model"]
