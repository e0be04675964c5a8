from django.contrib import admin
from django.urls import include, path

from saas_platform.health import healthz
from saas_platform.metrics import metrics_view

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("portal/", include("portal.urls")),
    path("v1/", include("inference.urls")),
    path("api/", include("billing.urls")),
    path("metrics", metrics_view, name="metrics"),
]

handler500 = "saas_platform.errors.server_error"
