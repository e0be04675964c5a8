"""Sign-ins, failed sign-ins and lockouts in the audit log.

Every sign-in, whatever the form or backend (the portal's, the admin's, single sign-on), goes
through `django.contrib.auth.authenticate` and `login`, which django-axes already follows with
its handler. This handler is django-axes' database one (AXES_HANDLER) plus the audit rows, so
each outcome is recorded in one place: `signin_record`.
"""

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_failure_limit

from audit.services import audit_record
from saas_platform import actors

SUCCEEDED = "signin.succeeded"
FAILED = "signin.failed"
LOCKED_OUT = "signin.locked_out"


def signin_record(*, request, outcome: str, username: str, user=None, method: str = "") -> None:
    """One sign-in outcome (SUCCEEDED, FAILED, LOCKED_OUT) for `username` from the request's
    address. `method` names how (the backend), never a credential."""
    audit_record(
        action=outcome,
        obj=user,
        object_repr=username,
        changes={"method": (None, method)} if method else None,
        actor=actors.of_request(request, user=user),
    )


class AuditedAxesHandler(AxesDatabaseHandler):
    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs):
        super().user_login_failed(sender, credentials, request=request, **kwargs)
        if request is None:
            return
        username = (get_client_username(request, credentials) or "")[:150]
        signin_record(request=request, outcome=FAILED, username=username)
        # The failure that reaches the limit locks out; later ones (counted on) extend it.
        failures = getattr(request, "axes_failures_since_start", 0)
        if failures == get_failure_limit(request, credentials):
            signin_record(request=request, outcome=LOCKED_OUT, username=username)

    def user_logged_in(self, sender, request, user, **kwargs):
        super().user_logged_in(sender, request, user, **kwargs)
        if request is not None:
            signin_record(
                request=request,
                outcome=SUCCEEDED,
                username=user.get_username(),
                user=user,
                method=getattr(user, "backend", "") or "",
            )
