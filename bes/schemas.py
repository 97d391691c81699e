"""Where the project's own XSD and WSDL files live, installed or in a source checkout."""

from functools import cache
from pathlib import Path

from bes.errors import ConfigError

_PACKAGED = Path(__file__).parent / "_schemas"  # the wheel maps schemas/ here
_CHECKOUT = Path(__file__).parent.parent / "schemas"


@cache
def schemas_dir() -> Path:
    """The directory holding ``service.xsd`` and the files it imports.

    Raises:
        ConfigError: Neither an installed copy nor a source checkout has them.
    """
    for candidate in (_PACKAGED, _CHECKOUT):
        if (candidate / "service.xsd").is_file():
            return candidate
    raise ConfigError(f"schema files not found in {_PACKAGED} or {_CHECKOUT}")


def schema_file(name: str) -> Path:
    """The path of one schema or WSDL file by its base name (no directories allowed).

    Raises:
        FileNotFoundError: No such file among ours.
    """
    if "/" in name or "\\" in name or name.startswith("."):
        raise FileNotFoundError(name)
    path = schemas_dir() / name
    if not path.is_file():
        raise FileNotFoundError(name)
    return path
