from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from saas_platform.health import healthz, readyz
from saas_platform.metrics import metrics_view

admin.site.site_header = "Inference platform: operator admin"
admin.site.site_title = "Operator admin"
admin.site.index_title = "Tenants, models, nodes and billing"

urlpatterns = [
    # People who open the server's address land on the portal (the API lives under /v1/).
    path("", RedirectView.as_view(pattern_name="portal:overview"), name="home"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("portal/", include("portal.urls")),
    path("api/", include("billing.urls")),
    path("api/", include("portal.api_urls")),
    path("metrics", metrics_view, name="metrics"),
]

handler400 = "saas_platform.errors.bad_request"
handler403 = "saas_platform.errors.permission_denied"
handler404 = "saas_platform.errors.page_not_found"
handler500 = "saas_platform.errors.server_error"
