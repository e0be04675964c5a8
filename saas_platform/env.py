"""Typed readers for settings that come from the environment (as healthchecks' envbool/envint)."""

import math
import os

from django.core.exceptions import ImproperlyConfigured


def _raw(name: str) -> str | None:
    """The variable's text, or None when it is unset or blank (then the default applies)."""
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw


def _number(name: str, raw: str, parse, kind: str, minimum):
    try:
        value = parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value):  # float("inf"), float("nan")
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = _raw(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = _raw(name)
    return default if raw is None else _number(name, raw, int, "an integer", minimum)


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = _raw(name)
    return default if raw is None else _number(name, raw, float, "a number", minimum)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = _raw(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]
