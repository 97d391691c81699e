"""Template images by name, user images by URI: from an image reference to bootable files.

The catalog is a JSON document (``{"templates": [...]}``) that a site keeps beside its data
and the service serves; each template names its disk by sha256 (plus where to fetch it) or,
for kernel-booted templates, its kernel and initrd by sha256. The built-in templates ``tiny``
(tiny.py) and ``debian-12`` (debian.py) are built on first use from Debian packages, put in
the cache and registered in the node's own catalog with the hashes they got.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bes.errors import BesError
from bes.vm import debian, tiny
from bes.vm.images import ImageCache, ImageError
from bes.vm.job import BootImage
from bes.vm.runner import CommandRunner
from bes.vm.spec import Disk, ImageFormat, ImageRef, KernelBoot

log = logging.getLogger(__name__)

TINY = "tiny"
DEBIAN_12 = "debian-12"
CATALOG_FILE = "templates.json"  # a site's catalog in the data directory; a node's in its cache
_LOCAL_CATALOG = CATALOG_FILE


class UnknownTemplate(BesError):
    """The image reference names a template the repository does not have."""


@dataclass(frozen=True)
class Template:
    name: str
    description: str = ""
    os_type: str = "Linux_64"
    min_memory_mib: int = 128
    format: ImageFormat | None = None
    sha256: str | None = None
    uri: str | None = None
    kernel_sha256: str | None = None
    initrd_sha256: str | None = None
    cmdline: str | None = None
    runs_cloud_config: bool = True
    jsdl_os: tuple[str, ...] = ()
    """What plain JSDL jobs select this template with, in Resources/OperatingSystem: a
    Description, ``NAME VERSION`` or ``NAME`` (e.g. ``LINUX``)."""
    build: str | None = None
    """How a template built on the node was made (tiny: its init script's hash); a node
    rebuilds it when this changes."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format"] = self.format.value if self.format else None
        data["jsdl_os"] = list(self.jsdl_os) or None
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Template:
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown or "name" not in data:
            raise ImageError(f"bad template entry {data.get('name', '?')}: {sorted(unknown)}")
        values = dict(data)
        if values.get("format") is not None:
            values["format"] = ImageFormat(values["format"])
        values["jsdl_os"] = tuple(values.get("jsdl_os") or ())
        return cls(**values)


class Catalog:
    """Templates by name, and the default one for jobs that name none (``default_template``
    in the JSON)."""

    def __init__(self, templates: list[Template] | None = None, *, default: str | None = None):
        self._templates = {template.name: template for template in templates or []}
        self.default = default

    @classmethod
    def load(cls, path: Path) -> Catalog:
        if not path.exists():
            return cls()
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ImageError(f"cannot read the image catalog {path}: {exc}") from exc

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalog:
        default = data.get("default_template")
        if default is not None and not isinstance(default, str):
            raise ImageError("default_template must be a template's name")
        return cls([Template.from_json(e) for e in data.get("templates", [])], default=default)

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        partial.replace(path)

    def get(self, name: str) -> Template | None:
        return self._templates.get(name)

    def add(self, template: Template) -> None:
        self._templates[template.name] = template

    def names(self) -> list[str]:
        return sorted(self._templates)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "templates": [self._templates[name].to_json() for name in self.names()]
        }
        if self.default is not None:
            data["default_template"] = self.default
        return data


TINY_TEMPLATE = Template(
    TINY,
    "Debian kernel and busybox; runs shell-script user-data; built on each node on first use "
    "from Debian packages",
    min_memory_mib=128,
    runs_cloud_config=False,
)

DEBIAN_12_TEMPLATE = Template(
    DEBIAN_12,
    "Debian 12 (bookworm): systemd, cloud-init (NoCloud), Python 3, OpenSSH server and SFTP; "
    "built on each node on first use from Debian packages (needs root, for debootstrap); "
    "boots with its own kernel on QEMU only",
    min_memory_mib=512,
    jsdl_os=("debian 12", "debian-12"),
)

BUILT_IN_TEMPLATES = (TINY_TEMPLATE, DEBIAN_12_TEMPLATE)
"""Templates every node builds itself; a catalog names them without files."""


class ImageRepository:
    """Resolves image references against a site catalog and the node's cache."""

    def __init__(
        self,
        cache: ImageCache,
        catalog: Catalog | None = None,
        *,
        runner: CommandRunner | None = None,
        debian_mirror: str | None = None,
    ) -> None:
        """``debian_mirror`` is where debian-12 is built from (default: debian.default_mirror)."""
        self.cache = cache
        self._site = catalog or Catalog()
        self.site_catalog = self._site
        """The site's catalog (templates, their operating systems, the default)."""
        self._runner = runner or CommandRunner()
        self._debian_mirror = debian_mirror

    def template(self, name: str) -> Template | None:
        local = Catalog.load(self.cache.root / _LOCAL_CATALOG).get(name)
        if local is not None and self._available(local):
            return local
        return self._site.get(name)

    def catalog(self) -> Catalog:
        """The site's templates plus those built on this node."""
        merged = Catalog([t for n in self._site.names() if (t := self._site.get(n))])
        local = Catalog.load(self.cache.root / _LOCAL_CATALOG)
        for name in local.names():
            template = local.get(name)
            if template is not None:
                merged.add(template)
        for built_in in BUILT_IN_TEMPLATES:
            if merged.get(built_in.name) is None:
                merged.add(built_in)
        return merged

    def resolve(
        self, ref: ImageRef, formats: tuple[ImageFormat, ...] = tuple(ImageFormat)
    ) -> tuple[BootImage, Template | None]:
        """Bootable files for ``ref``, fetched, verified and converted to one of ``formats``
        (a hypervisor's, preferred first) if need be; the template, if it named one."""
        boot, template = self._resolve(ref)
        if boot.disk is not None and boot.disk.format not in formats:
            sha256 = template.sha256 if template is not None else ref.sha256
            if sha256 is None:
                raise ImageError("cannot convert an image whose sha256 is unknown")
            path = self.cache.converted(sha256, boot.disk.format, formats[0])
            boot = dataclasses.replace(boot, disk=Disk(path, formats[0], read_only=True))
        return boot, template

    def _resolve(self, ref: ImageRef) -> tuple[BootImage, Template | None]:
        if ref.template is not None:
            template = self.template(ref.template)
            if ref.template == TINY and (template is None or template.build != tiny.BUILD):
                # tiny is built by each node (a catalog's tiny, e.g. the service's, names no
                # files), again whenever what goes into it changed.
                template = self._build_tiny()
            elif ref.template == DEBIAN_12 and (template is None or template.build != debian.BUILD):
                template = self._build_debian()
            if template is None:
                raise UnknownTemplate(f"no template image named {ref.template!r}")
            return self._boot_image(template), template
        if ref.uri is None or ref.sha256 is None or ref.format is None:
            raise ImageError("a user image needs its URI, sha256 and format")
        path = self.cache.fetch(ref.uri, ref.sha256, ref.format)
        return BootImage(disk=Disk(path, ref.format, read_only=True)), None

    def _boot_image(self, template: Template) -> BootImage:
        disk = kernel = None
        if template.sha256 is not None:
            if template.format is None:
                raise ImageError(f"template {template.name} names no disk format")
            if template.uri is not None:
                path = self.cache.fetch(template.uri, template.sha256, template.format)
            elif self.cache.has(template.sha256):
                path = self.cache.disk(template.sha256, template.format)
            else:
                raise ImageError(f"template {template.name} is neither cached nor downloadable")
            disk = Disk(path, template.format, read_only=True)
        if template.kernel_sha256 is not None:
            kernel = KernelBoot(
                self.cache.path(template.kernel_sha256),
                self.cache.path(template.initrd_sha256) if template.initrd_sha256 else None,
                template.cmdline or "",
            )
        if disk is None and kernel is None:
            raise ImageError(f"template {template.name} has neither a disk nor a kernel")
        return BootImage(disk=disk, kernel=kernel, runs_cloud_config=template.runs_cloud_config)

    def _available(self, template: Template) -> bool:
        wanted = [template.sha256, template.kernel_sha256, template.initrd_sha256]
        return all(self.cache.has(sha) for sha in wanted if sha is not None)

    def _build_tiny(self) -> Template:
        with (self.cache.root / ".tiny.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per node
            existing = Catalog.load(self.cache.root / _LOCAL_CATALOG).get(TINY)
            if existing is not None and self._available(existing) and existing.build == tiny.BUILD:
                return existing
            log.info("building the template %s from Debian packages (once per node)", TINY)
            build_dir = Path(tempfile.mkdtemp(prefix="tiny-", dir=self.cache.root))
            try:
                built = tiny.build(build_dir, self._runner)
                kernel = self.cache.add(built.kernel)
                initrd = self.cache.add(built.initrd)
            finally:
                shutil.rmtree(build_dir, ignore_errors=True)
            return self._register(
                Template(
                    TINY,
                    description="Debian kernel and busybox; runs shell-script user-data "
                    f"({', '.join(built.packages)})",
                    min_memory_mib=128,
                    kernel_sha256=kernel,
                    initrd_sha256=initrd,
                    cmdline=built.cmdline,
                    runs_cloud_config=False,
                    build=tiny.BUILD,
                )
            )

    def _build_debian(self) -> Template:
        with (self.cache.root / ".debian.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per node
            existing = Catalog.load(self.cache.root / _LOCAL_CATALOG).get(DEBIAN_12)
            if (
                existing is not None
                and self._available(existing)
                and existing.build == debian.BUILD
            ):
                return existing
            log.info("building the template %s from Debian packages (once per node)", DEBIAN_12)
            build_dir = Path(tempfile.mkdtemp(prefix="debian-", dir=self.cache.root))
            try:
                built = debian.build(build_dir, self._runner, mirror=self._debian_mirror)
                disk = self.cache.add(built.disk, image_format=ImageFormat.QCOW2)
                kernel = self.cache.add(built.kernel)
                initrd = self.cache.add(built.initrd)
            finally:
                debian.remove_tree(build_dir, self._runner)
            return self._register(
                dataclasses.replace(
                    DEBIAN_12_TEMPLATE,
                    description=f"Debian 12 (bookworm, {built.package_count} packages, Linux "
                    f"{built.kernel_version}): systemd, cloud-init (NoCloud), Python "
                    f"{built.python_version}, OpenSSH server and SFTP; built on this node",
                    format=ImageFormat.QCOW2,
                    sha256=disk,
                    kernel_sha256=kernel,
                    initrd_sha256=initrd,
                    cmdline=built.cmdline,
                    build=debian.BUILD,
                )
            )

    def _register(self, template: Template) -> Template:
        """Put a template built here in the node's own catalog."""
        local = Catalog.load(self.cache.root / _LOCAL_CATALOG)
        local.add(template)
        local.save(self.cache.root / _LOCAL_CATALOG)
        return template
