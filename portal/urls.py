from django.contrib.auth import views as auth_views
from django.urls import path, re_path, reverse_lazy

from portal.forms import PortalPasswordResetForm
from portal.views import (
    account,
    audit,
    credits,
    invitations,
    invoices,
    keys,
    members,
    overview,
    sso,
    usage,
    webhooks,
)

app_name = "portal"


def _auth(view, template: str, **options):
    return view.as_view(template_name=template, **options)


urlpatterns = [
    path("", overview.overview, name="overview"),
    path("login/", account.LoginView.as_view(), name="login"),
    path("logout/", account.LogoutView.as_view(), name="logout"),
    path("sso/login/", sso.SsoLoginView.as_view(), name="sso_login"),
    path("sso/callback/", sso.SsoCallbackView.as_view(), name="sso_callback"),
    path("tenants/", account.tenant_choose, name="tenant_choose"),
    path("password/change/", _auth(auth_views.PasswordChangeView, "portal/password_change.html",
         success_url=reverse_lazy("portal:password_change_done")), name="password_change"),
    path("password/change/done/", _auth(auth_views.PasswordChangeDoneView,
         "portal/password_change_done.html"), name="password_change_done"),
    path("password/reset/", _auth(auth_views.PasswordResetView, "portal/password_reset.html",
         form_class=PortalPasswordResetForm,
         email_template_name="portal/emails/password_reset.txt",
         subject_template_name="portal/emails/password_reset_subject.txt",
         success_url=reverse_lazy("portal:password_reset_done")), name="password_reset"),
    path("password/reset/sent/", _auth(auth_views.PasswordResetDoneView,
         "portal/password_reset_done.html"), name="password_reset_done"),
    path("password/reset/<uidb64>/<token>/", _auth(account.PasswordResetConfirmView,
         "portal/password_reset_confirm.html",
         success_url=reverse_lazy("portal:password_reset_complete")),
         name="password_reset_confirm"),
    path("password/reset/complete/", _auth(auth_views.PasswordResetCompleteView,
         "portal/password_reset_complete.html"), name="password_reset_complete"),
    path("keys/", keys.key_list, name="keys"),
    path("keys/<int:pk>/revoke/", keys.key_revoke, name="key_revoke"),
    path("keys/<int:pk>/rotate/", keys.key_rotate, name="key_rotate"),
    path("keys/<int:pk>/limits/", keys.key_limits, name="key_limits"),
    path("usage/", usage.usage, name="usage"),
    path("usage.csv", usage.usage_csv, name="usage_csv"),
    path("credits/", credits.credit_list, name="credits"),
    path("invoices/", invoices.invoice_list, name="invoices"),
    path("invoices/<str:ref>/", invoices.invoice_detail, name="invoice"),
    re_path(r"^invoices/(?P<ref>[^/]+)/(?P<fmt>pdf|csv|json)$", invoices.invoice_file,
            name="invoice_file"),
    path("members/", members.member_list, name="members"),
    path("members/<int:pk>/role/", members.member_role, name="member_role"),
    path("members/<int:pk>/remove/", members.member_remove, name="member_remove"),
    path("members/invitations/<int:pk>/cancel/", members.invitation_cancel,
         name="invitation_cancel"),
    path("invitations/<str:token>/", invitations.invitation_accept, name="invitation"),
    path("webhooks/", webhooks.webhook, name="webhooks"),
    path("webhooks/roll/", webhooks.webhook_roll, name="webhook_roll"),
    path("webhooks/test/", webhooks.webhook_test, name="webhook_test"),
    path("webhooks/remove/", webhooks.webhook_remove, name="webhook_remove"),
    path("webhooks/alerts/", webhooks.alert_thresholds, name="alert_thresholds"),
    path("audit/", audit.audit_log, name="audit"),
]  # fmt: skip
