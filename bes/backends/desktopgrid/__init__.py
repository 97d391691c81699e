"""The desktop-grid backend: a queue in the service's database that workers pull from."""

from bes.backends.desktopgrid.backend import DesktopGridBackend
from bes.backends.desktopgrid.config import DesktopGridConfig

__all__ = ["DesktopGridBackend", "DesktopGridConfig"]
