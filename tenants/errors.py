"""Why a presented key is refused. Each is its own class so callers and tests can tell them apart;
none of the messages ever contains the key itself."""

from saas_platform.errors import AuthenticationFailed, PermissionDenied, PlatformError


class MissingApiKey(AuthenticationFailed):
    def __init__(self):
        super().__init__(
            "No API key provided. Send it as 'Authorization: Bearer sk-...'.",
        )


class MalformedApiKey(AuthenticationFailed):
    def __init__(self):
        super().__init__("Incorrect API key provided: it is not a valid key of this platform.")


class UnknownApiKey(AuthenticationFailed):
    def __init__(self):
        super().__init__("Incorrect API key provided: no such key.")


class RevokedApiKey(AuthenticationFailed):
    def __init__(self, display_prefix: str):
        super().__init__(f"API key {display_prefix}… has been revoked.")


class ExpiredApiKey(AuthenticationFailed):
    def __init__(self, display_prefix: str):
        super().__init__(f"API key {display_prefix}… has expired.")


class TenantSuspended(PermissionDenied):
    """The key is valid but its tenant is suspended. The message names no tenant: whoever holds
    a leaked key learns nothing about whose it is."""

    code = "tenant_suspended"

    def __init__(self):
        super().__init__("This API key's account is suspended. Contact the operator.")


class LastOwner(PlatformError):
    """Removing or demoting the only owner would leave nobody able to manage the members."""

    status = 409
    code = "last_owner"

    def __init__(self, slug: str):
        super().__init__(f"{slug!r} needs at least one owner: make someone else owner first.")


class InvitationRefused(PlatformError):
    """An invitation that cannot be made or accepted; the message says why."""

    status = 400
    code = "invitation_refused"


class StaffNotInvitable(InvitationRefused):
    code = "staff_not_invitable"

    def __init__(self):
        super().__init__(
            "This address belongs to an operator account; operators are added to tenants in "
            "the admin, not invited."
        )


class AlreadyMember(InvitationRefused):
    code = "already_member"

    def __init__(self):
        super().__init__("They are already a member.")


class InvitationNotOpen(InvitationRefused):
    status = 404
    code = "invitation_not_open"

    def __init__(self):
        super().__init__("This invitation has expired, was cancelled or was already used.")


class InvitationForSomeoneElse(InvitationRefused):
    status = 403
    code = "invitation_for_someone_else"

    def __init__(self, email: str):
        super().__init__(
            f"This invitation is for {email}: sign in with the account of that address."
        )
