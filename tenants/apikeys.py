"""The API key format: `sk-` + public prefix + secret + checksum, all base62.

Base62 keeps the part after `sk-` one word, so a double click selects it, and keeps it URL-safe.
The checksum (CRC32, as GitHub's tokens carry) lets the middleware and secret scanners reject a
mistyped or invented key without a database lookup. Only the SHA-256 digest is ever stored.
"""

import hashlib
import re
import secrets
import string
import zlib
from dataclasses import dataclass

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_PREFIX = "sk-"
PREFIX_LENGTH = 8
# 44 base62 characters carry 44 * log2(62) ≈ 262 bits of randomness.
SECRET_LENGTH = 44
CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so any CRC32 fits
KEY_LENGTH = len(KEY_PREFIX) + PREFIX_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH

_KEY_PATTERN = re.compile(
    rf"^sk-(?P<prefix>[0-9A-Za-z]{{{PREFIX_LENGTH}}})"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)


class MalformedKeyError(ValueError):
    """The string is not an API key of ours: wrong shape or a checksum that does not match."""


@dataclass(frozen=True)
class GeneratedKey:
    plaintext: str
    prefix: str
    digest: str


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        chars.append(ALPHABET[remainder])
    return "".join(reversed(chars))


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def key_digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_key() -> GeneratedKey:
    prefix = _random_base62(PREFIX_LENGTH)
    body = KEY_PREFIX + prefix + _random_base62(SECRET_LENGTH)
    plaintext = body + _checksum(body)
    return GeneratedKey(plaintext=plaintext, prefix=prefix, digest=key_digest(plaintext))


def parse_key(presented: str) -> str:
    """Return the key's public prefix, or raise MalformedKeyError; never touches the database."""
    match = _KEY_PATTERN.match(presented)
    if not match:
        raise MalformedKeyError("not an API key of this platform")
    body = presented[:-CHECKSUM_LENGTH]
    if not secrets.compare_digest(_checksum(body), match["checksum"]):
        raise MalformedKeyError("API key checksum does not match")
    return match["prefix"]


def normalize_prefix(value: str) -> str:
    """Accept a prefix as lists show it (`sk-AbC12345`) or bare (`AbC12345`)."""
    value = value.strip()
    return value[len(KEY_PREFIX) :] if value.startswith(KEY_PREFIX) else value


def bearer_key(authorization: str) -> str | None:
    """The key in an `Authorization: Bearer <key>` header value, or None."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None
