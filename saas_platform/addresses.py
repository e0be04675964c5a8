"""Client addresses: which peers' forwarded headers are believed, and the one address every
check reads.

`TRUSTED_PROXIES` (addresses or CIDRs, none by default) names the proxies whose
`X-Forwarded-For` and `X-Forwarded-Proto` are believed. saas_platform/asgi.py applies it once, in
front of everything (uvicorn's ProxyHeadersMiddleware, which walks `X-Forwarded-For` from the
right past trusted hops): the connection's client address and scheme become the forwarded ones
only when the peer is such a proxy. Every check then reads the result and nothing else: Django's
`REMOTE_ADDR` and `request.is_secure()`, the sign-in lockout (django-axes, `client_address`),
`/metrics`, and the gateway's `scope["client"]`.
"""

import ipaddress

from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(name: str, values: list[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs from the setting `name`, or ImproperlyConfigured naming the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must be IP addresses or CIDRs (10.0.0.0/8), got {value!r}"
            ) from None
    return tuple(networks)


def address_in(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request) -> str | None:
    """The client's address as the server believes it (django-axes' AXES_CLIENT_IP_CALLABLE):
    REMOTE_ADDR, which is the peer's unless the peer is a trusted proxy."""
    return request.META.get("REMOTE_ADDR")


def is_public_address(address: str) -> bool:
    """True for an address on the public internet: not loopback, private, link-local (the cloud
    metadata range 169.254.0.0/16 with it), multicast, reserved or unspecified. The one rule for
    addresses the platform connects to or lets an engine fetch on a tenant's behalf."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return ip.is_global and not ip.is_multicast
