"""Backend names to implementations, imported lazily (a backend's dependencies load only when
it is used)."""

from __future__ import annotations

import importlib
from typing import Final

from bes.backends.base import Backend
from bes.errors import ConfigError

BACKENDS: Final[dict[str, str]] = {
    "desktopgrid": "bes.backends.desktopgrid:DesktopGridBackend",
    "fake": "bes.backends.fake:FakeBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``.

    Raises:
        ConfigError: No such backend, or its module cannot be imported.
    """
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"unknown backend {name!r}; known backends: {known}") from None
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend {name!r} cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"{target} is not a Backend")
    return cls
