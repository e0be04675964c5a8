"""Image parts a tenant sends are fetched by the engine, not by us: an engine that fetches an
`https://` URL can be pointed at an internal address (a cloud's metadata service at
169.254.169.254, a database's admin page). A model must allow images (staff's choice), and then
only `data:` URLs or `https` URLs whose host resolves to public addresses only pass."""

import asyncio
import socket
from urllib.parse import urlsplit

from gateway.parsing import InvalidRequest
from models_mgmt.models import ServedModel
from saas_platform.addresses import is_public_address

PARAM = "messages"


async def _public_host(host: str) -> bool:
    try:
        return is_public_address(host)  # a literal address
    except ValueError:
        pass
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(is_public_address(info[4][0]) for info in found)


async def check_images(urls: tuple[str, ...], model: ServedModel) -> None:
    """Refuse (400) image parts the model does not take, or URLs that are not public."""
    if not urls:
        return
    if not model.allow_images:
        raise InvalidRequest(f"The model '{model.model_id}' does not accept images.", param=PARAM)
    for url in urls:
        if url.startswith("data:"):
            continue
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
            raise InvalidRequest("An image URL must be a data: URL or an https URL.", param=PARAM)
        if not await _public_host(parts.hostname):
            raise InvalidRequest("An image URL's host must be a public address.", param=PARAM)
