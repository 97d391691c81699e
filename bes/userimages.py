"""Users' own VM images: a disk a user uploaded to their file store, registered under a name
that jobs use like a site template's.

Registering (``POST /bes/images``) takes a file the caller has in their store and looks at
it as hostile input (bes.vm.inspect): its format is what qemu-img's probe of its header says,
never its name; an image that names a backing file, an external data file or other extents,
is encrypted or too large is refused with the reason. QCOW2, VDI, single-file VMDK and ISO
images are kept as they are (each worker converts to what its hypervisor takes, once, cached
by sha256); a raw disk is converted to QCOW2, stored as a new file of the owner (raw disks
travel to every worker at their full virtual size). Other formats qemu-img knows (VHD, VHDX,
QED, ...) are refused with the command that converts them.

An image is its owner's: listed for them and usable by them only, unless an administrator
publishes it, which makes it usable by everyone under its name (one published image per
name). A site template's name always means the site's template: a user image may not take
one. At CreateActivity, a VM extension naming one of the caller's images (else a published
one) is resolved: the stored job names the disk as ``bes-store:sha256/HEX`` with its sha256
and format, the activity is recorded as using the file (so it stays while the activity has
not ended), and workers fetch it through their lease like a store input, and cache it by
sha256 like any image. The file an image uses never expires while the image exists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bes.db import image_rows as rows
from bes.db.image_rows import UserImageRow
from bes.db.store import Database
from bes.errors import BesError, InvalidRequest, NotAuthorized
from bes.filerefs import FileRef, NoSuchFile
from bes.filestore import FileStore
from bes.jsdl.model import JobDefinition
from bes.principal import Principal
from bes.vm.images import ImageError
from bes.vm.inspect import (
    DEFAULT_MAX_VIRTUAL_BYTES,
    InspectionError,
    detect_format,
    inspect_image,
)
from bes.vm.repository import BUILT_IN_TEMPLATES, Catalog
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageFormat, ImageRef, VirtualMachine
from bes.vmjob import VmDefaults

log = logging.getLogger(__name__)

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_OS_TYPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}\Z")
_MAX_MEMORY_MIB: Final = 1024 * 1024
_HEAD_BYTES: Final = 2048
_ISO_MAGIC: Final = (0x8001, b"CD001")  # ISO 9660 primary volume descriptor
_KEPT: Final = {
    "qcow2": ImageFormat.QCOW2,
    "vdi": ImageFormat.VDI,
    "vmdk": ImageFormat.VMDK,
}
_CONVERT_TIMEOUT_S: Final = 3600.0
_CHUNK: Final = 1024 * 1024
_LISTING_LIMIT: Final = 10_000


class ImageRequestError(BesError):
    """A request about user images that cannot be served; the message says why."""


class InvalidImage(ImageRequestError):
    """A bad name or settings, or a disk that is refused (format, backing file, ...)."""


class ImageNameTaken(ImageRequestError):
    """The name is a site template's, the caller's other image's, or published already."""


class NoSuchImage(ImageRequestError):
    """No image of that name that the caller may see."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileUse:
    """A stored file a job uses: whose, and which."""

    owner: str
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Examined:
    """What registering found in a disk."""

    format: ImageFormat
    converted_from: str | None = None
    """The format it was converted from (it is then stored anew)."""


class UserImages:
    """Users' images, their rows in ``db`` and their disks in ``store``.

    Args:
        db: The service's database.
        store: The file store the disks are in.
        catalog_file: The site's template catalog (its names are the site's).
        runner: Runs qemu-img.
        img_binary: The qemu-img to run.
        max_virtual_bytes: The largest virtual disk size accepted.
        clock: The current time (aware, UTC).
    """

    def __init__(
        self,
        db: Database,
        store: FileStore,
        *,
        catalog_file: Path,
        runner: CommandRunner | None = None,
        img_binary: str = "qemu-img",
        max_virtual_bytes: int = DEFAULT_MAX_VIRTUAL_BYTES,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._db = db
        self._store = store
        self.catalog_file = catalog_file
        self._runner = runner or CommandRunner()
        self._img_binary = img_binary
        self._max_virtual_bytes = max_virtual_bytes
        self._clock = clock

    # ------------------------------------------------------------------ reads

    def site_catalog(self) -> Catalog:
        """The site's templates and the built-in ones (blocking: reads the catalog file).

        Raises:
            ImageError: The catalog is unreadable.
        """
        catalog = Catalog.load(self.catalog_file)
        for built_in in BUILT_IN_TEMPLATES:
            if catalog.get(built_in.name) is None:
                catalog.add(built_in)
        return catalog

    async def listing(self, caller: Principal) -> list[UserImageRow]:
        """The caller's images and the published ones; every image for an administrator."""
        return await self._db.read(
            rows.visible, caller.name, every=caller.admin, limit=_LISTING_LIMIT
        )

    async def file_owner(self, activity_id: str, sha256: str) -> str | None:
        """Whose file with this sha256 the activity was recorded to use (a published image
        is its owner's file)."""
        return await self._db.read(rows.file_owner, activity_id, sha256)

    # ------------------------------------------------------------------ changes

    async def register(
        self,
        owner: str,
        *,
        name: str,
        sha256: str,
        os_type: str | None = None,
        min_memory_mib: int | None = None,
    ) -> UserImageRow:
        """Register the owner's stored file ``sha256`` as their image ``name``.

        Raises:
            InvalidImage: A bad name or setting, or the disk is refused (the reason).
            ImageNameTaken: The name is a site template's or the owner's other image's.
            NoSuchFile: The owner has no such file (or it expired).
            OverQuota: A converted disk does not fit the owner's quota.
        """
        _check_settings(name, os_type, min_memory_mib)
        await self._check_free(owner, name)
        found = await self._store.live(owner, FileRef(sha256=sha256))
        blob = self._store.blob(owner, found.sha256).resolve()
        examined = await asyncio.to_thread(self._examine, blob)
        stored_sha256 = found.sha256
        if examined.converted_from is not None:
            stored_sha256 = await self._convert(owner, blob)
        image = UserImageRow(
            owner=owner,
            name=name,
            sha256=stored_sha256,
            format=examined.format.value,
            os_type=os_type,
            min_memory_mib=min_memory_mib,
            created_at=self._clock(),
        )
        if not await self._db.write(rows.add_image, image):
            raise ImageNameTaken(f"you have an image named {name!r} already; remove it first")
        log.info(
            "%s registered the image %s (%s, sha256 %s%s)",
            owner,
            name,
            image.format,
            image.sha256,
            f", converted from {examined.converted_from}" if examined.converted_from else "",
        )
        return image

    async def remove(self, owner: str, name: str) -> None:
        """Remove the owner's image (its file stays in their store, and expires unused).

        Raises:
            NoSuchImage: The owner has none of that name.
        """
        if not await self._db.write(rows.remove_image, (owner, name)):
            raise NoSuchImage(f"you have no image named {name!r}")

    async def publish(
        self, caller: Principal, name: str, *, owner: str | None = None, published: bool = True
    ) -> UserImageRow:
        """Publish a user's image for everyone, or withdraw it (administrators only).

        Args:
            caller: Who asks.
            name: The image's name.
            owner: Whose image (needed only when several users have one of that name).
            published: Publish (True) or withdraw (False).

        Raises:
            NotAuthorized: The caller is not an administrator.
            NoSuchImage: There is no such image.
            ImageNameTaken: Another user's image of that name is published, or several
                users have one and ``owner`` does not say whose.
        """
        if not caller.admin:
            raise NotAuthorized("only an administrator publishes images")
        candidates = await self._db.read(rows.named, name)
        if owner is not None:
            candidates = [c for c in candidates if c.owner == owner]
        if not candidates:
            whose = f" of {owner}" if owner is not None else ""
            raise NoSuchImage(f"there is no image named {name!r}{whose}")
        if len(candidates) > 1:
            owners = ", ".join(c.owner for c in candidates)
            raise ImageNameTaken(
                f"several users have an image named {name!r} ({owners}); say whose (owner)"
            )
        [image] = candidates
        other = await self._db.write(rows.set_published, (image.owner, name, published))
        if other == "":
            raise NoSuchImage(f"there is no image named {name!r} of {image.owner}")
        if other is not None:
            raise ImageNameTaken(
                f"the image {name!r} of {other} is published under that name; withdraw it first"
            )
        log.info("%s %s the image %s of %s", caller.name, _verb(published), name, image.owner)
        return dataclasses.replace(image, published=published)

    # ------------------------------------------------------------------ jobs

    async def localize(
        self, owner: str, job: JobDefinition
    ) -> tuple[JobDefinition, FileUse | None]:
        """``job`` (of ``owner``) with a VM extension naming one of the owner's images, or a
        published one, by its template name rewritten to name the image's disk; and the file
        it then uses. Other jobs are returned as they are.

        Raises:
            InvalidRequest: The image's disk is no longer in its owner's store.
        """
        machine = job.job_description.virtual_machine
        name = machine.image.template if machine is not None else None
        if machine is None or name is None or not _NAME.match(name):
            return job, None
        image = await self._db.read(rows.owned, owner, name)
        if image is None:
            image = await self._db.read(rows.published, name)
        if image is None:
            return job, None
        try:
            if await asyncio.to_thread(lambda: self.site_catalog().get(name)) is not None:
                return job, None  # a site template's name means the site's template
        except ImageError as exc:
            log.error("%s", exc)
        try:
            await self._store.live(image.owner, FileRef(sha256=image.sha256))
        except NoSuchFile as exc:
            raise InvalidRequest(f"the image {name!r}: its disk is gone ({exc})") from exc
        resolved = _with_image(machine, image)
        return _with_machine(job, resolved), FileUse(owner=image.owner, sha256=image.sha256)

    # ------------------------------------------------------------------ internals

    async def _check_free(self, owner: str, name: str) -> None:
        try:
            site = await asyncio.to_thread(self.site_catalog)
        except ImageError as exc:
            log.error("%s", exc)
            site = Catalog(list(BUILT_IN_TEMPLATES))
        if site.get(name) is not None:
            raise ImageNameTaken(
                f"{name!r} is the name of one of this site's templates; choose another"
            )
        if await self._db.read(rows.owned, owner, name) is not None:
            raise ImageNameTaken(f"you have an image named {name!r} already; remove it first")

    def _examine(self, path: Path) -> Examined:
        """The disk's format from its content, checked by the inspection (blocking)."""
        with path.open("rb") as disk:
            head = disk.read(_HEAD_BYTES)
            disk.seek(_ISO_MAGIC[0])
            iso = disk.read(len(_ISO_MAGIC[1])) == _ISO_MAGIC[1]
        detected = detect_format(head)
        if detected is None:
            image_format = ImageFormat.ISO if iso else ImageFormat.RAW
        elif detected in _KEPT:
            image_format = _KEPT[detected]
        else:
            raise InvalidImage(
                f"the disk is a {detected} image, which this service does not take; convert "
                f"it first (qemu-img convert -f {detected} -O qcow2 DISK disk.qcow2)"
            )
        self._inspect(path, image_format)
        if image_format is ImageFormat.RAW:
            return Examined(format=ImageFormat.QCOW2, converted_from="raw")
        return Examined(format=image_format)

    def _inspect(self, path: Path, image_format: ImageFormat) -> None:
        try:
            inspect_image(
                path,
                image_format,
                runner=self._runner,
                img_binary=self._img_binary,
                max_virtual_bytes=self._max_virtual_bytes,
            )
        except InspectionError as exc:
            raise InvalidImage(f"the disk ({image_format.value}) is refused: {exc}") from exc

    async def _convert(self, owner: str, raw: Path) -> str:
        """Convert a raw disk to QCOW2 and store it as the owner's file; its sha256."""
        work = Path(tempfile.mkdtemp(prefix=".image-", dir=self._store.root))
        try:
            converted = work / "disk.qcow2"
            await asyncio.to_thread(self._qemu_convert, raw, converted)
            await asyncio.to_thread(self._inspect, converted, ImageFormat.QCOW2)
            size = converted.stat().st_size
            return await self._store.store_stream(owner, _chunks(converted), total=size)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _qemu_convert(self, source: Path, target: Path) -> None:
        argv = [self._img_binary, "convert", "-q", "-f", "raw", "-O", "qcow2"]
        result = self._runner.run(
            [*argv, str(source), str(target)], timeout_s=_CONVERT_TIMEOUT_S, check=False
        )
        if result.exit_code != 0:
            lines = result.stderr.strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.exit_code}"
            raise InvalidImage(f"the raw disk could not be converted to qcow2: {reason}")


def _check_settings(name: str, os_type: str | None, min_memory_mib: int | None) -> None:
    if not _NAME.match(name):
        raise InvalidImage(
            f"{name[:80]!r} is not an image name (letters, digits, '.', '_' and '-', "
            "at most 64, starting with a letter or digit)"
        )
    if os_type is not None and not _OS_TYPE.match(os_type):
        raise InvalidImage(f"{os_type[:80]!r} is not an operating system type")
    if min_memory_mib is not None and not 0 < min_memory_mib <= _MAX_MEMORY_MIB:
        raise InvalidImage(f"the minimum memory must be 1 to {_MAX_MEMORY_MIB} MiB")


def _with_image(machine: VirtualMachine, image: UserImageRow) -> VirtualMachine:
    """The VM naming the image's disk, with at least the image's minimum memory (the
    image's OS type is what it holds, for people: it is not the hypervisor's OS type)."""
    memory = machine.memory_mib
    if image.min_memory_mib is not None:
        given = memory if memory is not None else VmDefaults().memory_mib
        memory = max(given, image.min_memory_mib)
    return dataclasses.replace(
        machine,
        image=ImageRef(
            uri=FileRef(sha256=image.sha256).uri,
            sha256=image.sha256,
            format=ImageFormat(image.format),
        ),
        memory_mib=memory,
    )


def _with_machine(job: JobDefinition, machine: VirtualMachine) -> JobDefinition:
    description = job.job_description
    application, resources = description.application, description.resources
    if application is not None and application.virtual_machine is not None:
        description = dataclasses.replace(
            description, application=dataclasses.replace(application, virtual_machine=machine)
        )
    elif resources is not None:
        description = dataclasses.replace(
            description, resources=dataclasses.replace(resources, virtual_machine=machine)
        )
    return dataclasses.replace(job, job_description=description)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, _CHUNK):
            yield chunk


def _verb(published: bool) -> str:
    return "published" if published else "withdrew"
