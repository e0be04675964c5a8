"""State changes of tenants, members and API keys: the seed's TenantRegistry verbs.

Views, the admin, the CLI and the gateway all call these; nothing else writes these rows.
"""

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, models, transaction
from django.utils import timezone

from audit.services import audit_record, changed, field_values
from saas_platform.text import validate_display_name
from tenants import apikeys
from tenants.errors import (
    ExpiredApiKey,
    LastOwner,
    MalformedApiKey,
    MissingApiKey,
    RevokedApiKey,
    TenantSuspended,
    UnknownApiKey,
)
from tenants.models import ApiKey, Membership, Tenant
from tenants.quotas import KeyLimits, TenantConfig, validate_key_limits, validate_tenant_config

logger = logging.getLogger(__name__)

CONFIG_FIELDS = tuple(TenantConfig.__dataclass_fields__)
# What a key's audit rows show (never its digest).
# A key's own limits (tenants.quotas.KeyLimits).
KEY_LIMIT_FIELDS = (
    "max_concurrent_requests",
    "max_tokens_per_minute",
    "max_requests_per_minute",
    "monthly_budget",
    "model_allow_list",
)
_KEY_FIELDS = ("name", "scope", "priority", "expires_at", *KEY_LIMIT_FIELDS)
# What `apikey_update` may change.
KEY_UPDATE_FIELDS = ("name", "priority", "expires_at", *KEY_LIMIT_FIELDS)


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key. `plaintext` exists only here, once: it is never stored."""

    api_key: ApiKey
    plaintext: str


@dataclass(frozen=True)
class Authenticated:
    tenant: Tenant
    api_key: ApiKey


def _lookup_cache_key(digest: str) -> str:
    return f"apikey:digest:{digest}"


def _last_known_cache_key(digest: str) -> str:
    return f"apikey:last-known:{digest}"


# How long the database's last answer for a key may stand in for it while the database is
# unreachable (a restart, a failover), so that known keys keep being served meanwhile.
LAST_KNOWN_KEY_SECONDS = 3600


class _UnknownDigests:
    """Digests that matched no key, remembered by this process alone, for APIKEY_CACHE_SECONDS
    and at most `size` of them. Keys with a valid checksum are free to invent: each used to
    leave two entries in the shared cache (one for an hour). Now an invented key costs at most
    one query per process, and memory here is bounded."""

    def __init__(self, size: int):
        self._size = size
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # the gateway looks keys up from a thread pool

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            until = self._until.get(digest)
            if until is None:
                return False
            if until < time.monotonic():
                del self._until[digest]
                return False
            return True

    def add(self, digest: str) -> None:
        seconds = settings.APIKEY_CACHE_SECONDS
        if seconds <= 0:
            return
        with self._lock:
            self._until[digest] = time.monotonic() + seconds
            self._until.move_to_end(digest)
            while len(self._until) > self._size:
                self._until.popitem(last=False)


_unknown_digests = _UnknownDigests(size=10_000)


def _forget_keys(keys) -> None:
    digests = [key.digest for key in keys]
    cache.delete_many(
        [_lookup_cache_key(d) for d in digests] + [_last_known_cache_key(d) for d in digests]
    )


def _validate(tenant: Tenant) -> None:
    # The quota rules first, so a bad limit gets their one message rather than a field
    # validator's generic one as well; then slug uniqueness and the other field checks.
    validate_tenant_config(tenant.config)
    tenant.full_clean()


# --- tenants -------------------------------------------------------------------------------


@transaction.atomic
def tenant_register(*, slug: str, name: str = "", **config) -> Tenant:
    """Create a tenant with its quota configuration (validated as everywhere)."""
    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown tenant settings: {sorted(unknown)}")
    tenant = Tenant(slug=slug, name=name or slug, **config)
    _validate(tenant)
    tenant.save()
    after = field_values(tenant, ("slug", "name", *CONFIG_FIELDS))
    audit_record(action="tenant.created", obj=tenant, changes=changed({}, after))
    logger.info("tenant registered: %s", tenant.slug)
    return tenant


@transaction.atomic
def tenant_update(*, tenant: Tenant, **changes) -> Tenant:
    unknown = set(changes) - set(CONFIG_FIELDS) - {"name"}
    if unknown:
        raise TypeError(f"unknown tenant settings: {sorted(unknown)}")
    stored = Tenant.objects.filter(pk=tenant.pk).values("name", *CONFIG_FIELDS).first() or {}
    for field, value in changes.items():
        setattr(tenant, field, value)
    _validate(tenant)
    tenant.save()
    difference = changed(stored, field_values(tenant, ("name", *CONFIG_FIELDS)))
    if difference:
        audit_record(action="tenant.quotas_changed", obj=tenant, changes=difference)
    _forget_keys(tenant.api_keys.all())
    return tenant


def _set_status(tenant: Tenant, status: str) -> tuple[str, str]:
    before = Tenant.objects.filter(pk=tenant.pk).values_list("status", flat=True).first()
    Tenant.objects.filter(pk=tenant.pk).update(status=status)
    tenant.status = status
    transaction.on_commit(lambda: _forget_keys(list(tenant.api_keys.all())))
    return before, status


@transaction.atomic
def tenant_suspend(*, tenant: Tenant) -> Tenant:
    status = _set_status(tenant, Tenant.Status.SUSPENDED)
    audit_record(action="tenant.suspended", obj=tenant, changes={"status": status})
    logger.info("tenant suspended: %s", tenant.slug)
    return tenant


@transaction.atomic
def tenant_resume(*, tenant: Tenant) -> Tenant:
    status = _set_status(tenant, Tenant.Status.ACTIVE)
    audit_record(action="tenant.resumed", obj=tenant, changes={"status": status})
    logger.info("tenant resumed: %s", tenant.slug)
    return tenant


def tenant_has_usage(tenant: Tenant) -> bool:
    """Whether the tenant ever used the platform: a key was used, or rows that must keep their
    owner name it. Those are the rows whose foreign key to Tenant is PROTECT (billing's ledger,
    invoices and own prices), asked with one EXISTS each: this app does not import the apps that
    own them, and a refused delete would load every such row to name it."""
    if tenant.api_keys.filter(last_used_at__isnull=False).exists():
        return True
    return any(
        relation.related_model._base_manager.filter(**{relation.field.name: tenant}).exists()
        for relation in Tenant._meta.related_objects
        if relation.on_delete in (models.PROTECT, models.RESTRICT)
    )


@transaction.atomic
def tenant_remove(*, tenant: Tenant) -> bool:
    """Remove a tenant: deleted if it never used the platform (`tenant_has_usage`); otherwise
    suspended with every key revoked, so its usage and invoices keep their owner. Returns True if
    it was deleted."""
    if tenant_has_usage(tenant):
        status = _set_status(tenant, Tenant.Status.SUSPENDED)
        now = timezone.now()
        keys = list(tenant.api_keys.filter(revoked_at__isnull=True))
        ApiKey.objects.filter(pk__in=[key.pk for key in keys]).update(revoked_at=now)
        transaction.on_commit(lambda: _forget_keys(keys))
        revoked = [key.display_prefix for key in keys]
        audit_record(
            action="tenant.removed",
            obj=tenant,
            changes={"status": status, "revoked_keys": (None, revoked)},
        )
        return False
    keys = list(tenant.api_keys.all())
    audit_record(action="tenant.removed", obj=tenant, changes={"deleted": (False, True)})
    tenant.delete()
    transaction.on_commit(lambda: _forget_keys(keys))
    return True


# --- members -------------------------------------------------------------------------------


def _lock_memberships(tenant: Tenant) -> list[Membership]:
    # Two owners demoting each other at once must not leave the tenant with none.
    return list(Membership.objects.select_for_update().filter(tenant=tenant))


def _ensure_another_owner(tenant: Tenant, leaving: Membership) -> None:
    owners = {m.pk for m in _lock_memberships(tenant) if m.role == Membership.Role.OWNER}
    if owners == {leaving.pk}:
        raise LastOwner(tenant.slug)


@transaction.atomic
def membership_set(*, tenant: Tenant, user, role: str = Membership.Role.MEMBER) -> Membership:
    """Add a user to a tenant, or change the role they have there (never demoting the last
    owner)."""
    existing = Membership.objects.filter(tenant=tenant, user=user).first()
    if existing is not None and role != Membership.Role.OWNER:
        _ensure_another_owner(tenant, existing)
    membership, _ = Membership.objects.update_or_create(
        tenant=tenant, user=user, defaults={"role": role}
    )
    if existing is None:
        audit_record(action="member.added", obj=membership, changes={"role": (None, role)})
    elif existing.role != role:
        audit_record(
            action="member.role_changed", obj=membership, changes={"role": (existing.role, role)}
        )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Take a user out of a tenant (never its last owner). Their account stays."""
    _ensure_another_owner(membership.tenant, membership)
    audit_record(action="member.removed", obj=membership, changes={"role": (membership.role, None)})
    membership.delete()


# --- single sign-on ------------------------------------------------------------------------


@dataclass(frozen=True)
class SsoAccess:
    """What a person's identity-provider claims gave them at this sign-in."""

    memberships: list[Membership]
    is_staff: bool

    @property
    def grants_anything(self) -> bool:
        return self.is_staff or bool(self.memberships)


_ROLE_RANK = {Membership.Role.MEMBER: 0, Membership.Role.OWNER: 1}


def _claim_values(claims: dict) -> list:
    values = claims.get(settings.OIDC_TENANTS_CLAIM) or []
    if isinstance(values, str):  # some providers send a single group as a string
        return [values]
    return values if isinstance(values, list) else []


def _roles_from_claims(claims: dict) -> dict[str, str]:
    """tenant:<slug>:owner|member values of OIDC_TENANTS_CLAIM as {slug: role}; other values
    are ignored, and of two roles for one tenant the higher wins."""
    roles: dict[str, str] = {}
    for value in _claim_values(claims):
        parts = value.split(":") if isinstance(value, str) else []
        if len(parts) != 3 or parts[0] != "tenant" or parts[2] not in _ROLE_RANK:
            continue
        slug, role = parts[1], parts[2]
        if slug not in roles or _ROLE_RANK[role] > _ROLE_RANK[roles[slug]]:
            roles[slug] = role
    return roles


@transaction.atomic
def membership_sync_from_claims(*, user, claims: dict) -> SsoAccess:
    """Make `user`'s memberships (and staff flag) what their identity provider's claims say, at
    each single sign-on (just in time): memberships of the tenants the claim names are created
    or get the claimed role; those it no longer names are removed, so access withdrawn at the
    provider ends at the next sign-in. The provider is the authority here, so this may leave a
    tenant without an owner (unlike the portal's and admin's changes); tenants that do not exist
    are ignored. Staff (and the admin's superuser rights, the operator's role) follow
    OIDC_STAFF_GROUP when it is set, and are left alone when it is not."""
    wanted = _roles_from_claims(claims)
    tenants = {tenant.slug: tenant for tenant in Tenant.objects.filter(slug__in=wanted)}
    current = {
        membership.tenant.slug: membership
        for membership in Membership.objects.select_for_update()
        .filter(user=user)
        .select_related("tenant")
    }
    for slug, membership in current.items():
        if slug not in tenants:
            audit_record(
                action="member.removed",
                obj=membership,
                changes={"role": (membership.role, None), "by": (None, "sso")},
            )
            membership.delete()
    memberships = []
    for slug, tenant in sorted(tenants.items()):
        membership = current.get(slug)
        if membership is None:
            membership = Membership.objects.create(tenant=tenant, user=user, role=wanted[slug])
            audit_record(
                action="member.added",
                obj=membership,
                changes={"role": (None, membership.role), "by": (None, "sso")},
            )
        elif membership.role != wanted[slug]:
            Membership.objects.filter(pk=membership.pk).update(role=wanted[slug])
            audit_record(
                action="member.role_changed",
                obj=membership,
                changes={"role": (membership.role, wanted[slug]), "by": (None, "sso")},
            )
            membership.role = wanted[slug]
        memberships.append(membership)
    if settings.OIDC_STAFF_GROUP:
        staff = settings.OIDC_STAFF_GROUP in _claim_values(claims)
        if (user.is_staff, user.is_superuser) != (staff, staff):
            audit_record(
                action="user.staff_changed",
                obj=user,
                changes={"is_staff": (user.is_staff, staff), "by": (None, "sso")},
            )
            user.is_staff = user.is_superuser = staff
            user.save(update_fields=["is_staff", "is_superuser"])
    return SsoAccess(memberships=memberships, is_staff=user.is_staff)


# --- API keys ------------------------------------------------------------------------------


@transaction.atomic
def apikey_issue(
    *,
    tenant: Tenant,
    name: str = "",
    expires_at: datetime | None = None,
    limits: KeyLimits | None = None,
    scope: str = ApiKey.Scope.INFERENCE,
    priority: str = ApiKey.Priority.NORMAL,
) -> IssuedKey:
    """Issue a new key for the tenant, with its own `limits` if given (each at most its
    tenant's); the plaintext is returned here once and never again. `scope` `manage` makes a
    key for /api/keys, refused on /v1/."""
    issued = _issue(tenant=tenant, name=name, expires_at=expires_at, scope=scope,
                    limits=limits or KeyLimits(), priority=priority)  # fmt: skip
    audit_record(
        action="apikey.created",
        obj=issued.api_key,
        changes=changed({}, field_values(issued.api_key, _KEY_FIELDS)),
    )
    return issued


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is None:
        return
    if timezone.is_naive(expires_at):
        raise ValidationError({"expires_at": "The expiry needs a time zone."})


def _issue(
    *,
    tenant: Tenant,
    name: str,
    expires_at: datetime | None,
    scope: str,
    limits: KeyLimits,
    priority: str = ApiKey.Priority.NORMAL,
) -> IssuedKey:
    validate_display_name(name)
    _check_expiry(expires_at)
    if scope not in ApiKey.Scope.values:
        raise ValidationError({"scope": f"scope must be one of {', '.join(ApiKey.Scope.values)}"})
    validate_key_limits(limits, tenant.config)
    _validate_priority(priority)
    for _attempt in range(5):
        generated = apikeys.generate_key()
        try:
            with transaction.atomic():
                api_key = ApiKey.objects.create(
                    tenant=tenant,
                    name=name,
                    prefix=generated.prefix,
                    digest=generated.digest,
                    expires_at=expires_at,
                    scope=scope,
                    **{field: getattr(limits, field) for field in KEY_LIMIT_FIELDS},
                    priority=priority,
                )
        except IntegrityError:
            continue  # a prefix collision (1 in 62**8): draw again
        logger.info("api key issued: %s for %s", api_key.display_prefix, tenant.slug)
        return IssuedKey(api_key=api_key, plaintext=generated.plaintext)
    raise RuntimeError("could not draw a unique API key prefix")


def _validate_priority(priority: str) -> None:
    if priority not in ApiKey.Priority.values:
        choices = ", ".join(ApiKey.Priority.values)
        raise ValidationError({"priority": f"Priority must be one of {choices}."})


@transaction.atomic
def apikey_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key at once (idempotent: a second revoke keeps the first time)."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=api_key.revoked_at
        )
        audit_record(
            action="apikey.revoked", obj=api_key, changes={"revoked_at": (None, api_key.revoked_at)}
        )
        logger.info("api key revoked: %s", api_key.display_prefix)
    transaction.on_commit(lambda: _forget_keys([api_key]))
    return api_key


@transaction.atomic
def apikey_rotate(*, api_key: ApiKey, grace: timedelta | None = None) -> IssuedKey:
    """Issue a replacement key, with the same name, scope and limits; the old one keeps
    working for the grace period (APIKEY_ROTATION_GRACE_SECONDS, 24 hours by default), then
    expires."""
    if api_key.state != ApiKey.State.ACTIVE:
        raise ValueError(f"{api_key.display_prefix} is {api_key.state}; only active keys rotate")
    if grace is None:
        grace = timedelta(seconds=settings.APIKEY_ROTATION_GRACE_SECONDS)
    issued = _issue(tenant=api_key.tenant, name=api_key.name, expires_at=api_key.expires_at,
                    scope=api_key.scope, limits=api_key.limits,
                    priority=api_key.priority)  # fmt: skip
    expires_before = api_key.expires_at
    grace_end = timezone.now() + grace
    if api_key.expires_at is None or api_key.expires_at > grace_end:
        api_key.expires_at = grace_end
    api_key.replaced_by = issued.api_key
    api_key.save(update_fields=["expires_at", "replaced_by"])
    audit_record(
        action="apikey.rotated",
        obj=api_key,
        changes={
            "expires_at": (expires_before, api_key.expires_at),
            "replaced_by": (None, issued.api_key.display_prefix),
        },
    )
    transaction.on_commit(lambda: _forget_keys([api_key]))
    return issued


@transaction.atomic
def apikey_update(*, api_key: ApiKey, **changes) -> ApiKey:
    """Change a key's name, expiry or its own limits (KEY_UPDATE_FIELDS: None removes a limit,
    an empty allow list allows every model of its tenant), validated as everywhere: each limit
    at most its tenant's."""
    unknown = set(changes) - set(KEY_UPDATE_FIELDS)
    if unknown:
        raise TypeError(f"unknown API key settings: {sorted(unknown)}")
    if "name" in changes:
        validate_display_name(changes["name"])
    if "priority" in changes:
        _validate_priority(changes["priority"])
    _check_expiry(changes.get("expires_at"))
    api_key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
    before = field_values(api_key, KEY_UPDATE_FIELDS)
    for field, value in changes.items():
        setattr(api_key, field, value)
    api_key.full_clean()  # ApiKey.clean: tenants.quotas.validate_key_limits
    difference = changed(before, field_values(api_key, KEY_UPDATE_FIELDS))
    if difference:
        api_key.save(update_fields=list(difference))
        audit_record(action="apikey.changed", obj=api_key, changes=difference)
        transaction.on_commit(lambda: _forget_keys([api_key]))
    return api_key


def _mark_used(api_key: ApiKey, now: datetime) -> None:
    # At most one write per key per interval: cache.add is atomic, so across every process
    # only the first request of the interval reaches the database.
    interval = settings.APIKEY_LAST_USED_INTERVAL_SECONDS
    if cache.add(f"apikey:used:{api_key.pk}", 1, timeout=interval):
        try:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        except DatabaseError:
            # Best effort: a database outage must not fail requests that need nothing else
            # from it; the next interval writes it again.
            logger.warning("could not record last use of %s", api_key.display_prefix)
            return
        api_key.last_used_at = now


def _lookup(digest: str) -> ApiKey | None:
    """The key with this digest from the database (None: no such key); while the database is
    unreachable, its last answer for a key that exists (revocation and suspension delete that
    too), else the database's error. Only keys that exist are kept in the shared cache."""
    try:
        api_key = ApiKey.objects.for_digest(digest)
    except DatabaseError:
        api_key = cache.get(_last_known_cache_key(digest))
        if not isinstance(api_key, ApiKey):
            raise
        logger.warning("database unavailable: %s served from its last lookup", api_key)
        return api_key
    if api_key is None:
        _unknown_digests.add(digest)
        return None
    cache.set(_last_known_cache_key(digest), api_key, timeout=LAST_KNOWN_KEY_SECONDS)
    cache.set(_lookup_cache_key(digest), api_key, timeout=settings.APIKEY_CACHE_SECONDS)
    return api_key


def tenant_for_key(presented: str | None) -> Authenticated:
    """The seed's TenantRegistry.Get: the tenant and key for a presented key, or the reason
    it is refused (missing, malformed, unknown, revoked, expired key; suspended tenant)."""
    if not presented:
        raise MissingApiKey()
    try:
        apikeys.parse_key(presented)
    except apikeys.MalformedKeyError:
        raise MalformedApiKey() from None
    digest = apikeys.key_digest(presented)
    if digest in _unknown_digests:
        raise UnknownApiKey()
    api_key = cache.get(_lookup_cache_key(digest))
    if not isinstance(api_key, ApiKey):  # not cached (or an entry from an older release)
        api_key = _lookup(digest)
    if api_key is None:
        raise UnknownApiKey()
    now = timezone.now()
    state = api_key.state_at(now)
    if state == ApiKey.State.REVOKED:
        raise RevokedApiKey(api_key.display_prefix)
    if state == ApiKey.State.EXPIRED:
        raise ExpiredApiKey(api_key.display_prefix)
    if not api_key.tenant.is_active:
        raise TenantSuspended()
    _mark_used(api_key, now)
    return Authenticated(tenant=api_key.tenant, api_key=api_key)
