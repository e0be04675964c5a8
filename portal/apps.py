from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Tenant portal"

    def ready(self):
        # The admin's password form is the portal's (single sign-on required, each outcome
        # reported), its sign-out the portal's (the provider's session too), and its sign-in
        # page offers single sign-on when it is configured.
        from django.conf import settings
        from django.contrib import admin

        from portal.forms import AdminSignInForm
        from portal.views.account import admin_logout

        admin.site.login_form = AdminSignInForm
        admin.site.logout = admin_logout
        if settings.SSO_ENABLED:
            admin.site.login_template = "portal/admin_login.html"
