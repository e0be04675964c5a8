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
