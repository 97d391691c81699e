"""Looking inside an image before any VM boots from it: a user's image is hostile input.

A disk image can name other files. A qcow2 names a backing file (any host path, or a
``json:`` or ``nbd:`` pseudo-file) and an external data file; a VMDK descriptor names its
extents; a sparse VMDK names a parent. QEMU follows those names on the host, so a qcow2 whose
backing file is a volunteer's ``~/.ssh/id_rsa`` shows that file to the guest through the
job's overlay. Every image is therefore inspected before its first use, in two steps:

1. Its header (the first 2 KiB, as much as QEMU reads to probe a format) must be the declared
   format's: raw and iso must look like no image format QEMU recognises, and a VMDK must be a
   single-file sparse one, because QEMU opens a VMDK descriptor's extents even to describe it.
2. ``qemu-img info -U -f FORMAT --output=json``: the format is given, so qemu-img never
   probes (probing picks a driver from the content, and a raw image whose bytes are a VMDK
   descriptor would then have qemu-img open the files it names); ``info`` without
   ``--backing-chain`` never opens a backing file. Its answer must show no backing file, no
   external data file, no extent or child in another file, no encryption, and a virtual size
   under the limit.

An image that passes names no other file, so the cached copy is self-contained as it is:
overlays (``-F FORMAT``) and conversions (``-f FORMAT``) read it alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bes.errors import BesError
from bes.vm.runner import CommandRunner
from bes.vm.spec import ImageFormat

DEFAULT_MAX_VIRTUAL_BYTES = 256 * 1024**3
"""The largest virtual disk accepted by default: a guest can fill its overlay up to this size
on the node's disk."""

_PROBE_BYTES = 2048  # QEMU's BLOCK_PROBE_BUF_SIZE
_INFO_TIMEOUT_S = 60.0
_NAME_CHARS = 200  # of a hostile file name quoted in a message
_QCOW_MAGIC = b"QFI\xfb"
_VMDK_SPARSE_MAGIC = b"KDMV"
_VDI_SIGNATURE = b"\x7f\x10\xda\xbe"  # 0xbeda107f little-endian, at offset 64
_VDI_SIGNATURE_OFFSET = 64
# The magic of the formats QEMU probes by content (block/*.c, each driver's bdrv_probe).
_MAGIC = (
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    (b"QED\x00", "qed"),
    (b"conectix", "vpc"),
    (b"vhdxfile", "vhdx"),
    (b"LUKS\xba\xbe", "luks"),
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
    (b"Bochs Virtual HD Image", "bochs"),
    (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop", "cloop"),
)
_BACKING_KEYS = ("backing-filename", "full-backing-filename", "backing-filename-format")
_SINGLE_FILE_VMDK = "only single-file VMDK images (monolithicSparse, streamOptimized) are accepted"


class InspectionError(BesError):
    """An image is not safe to boot (it names other files, is not in its declared format,
    or is too large), or it could not be inspected. The message says what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageInfo:
    """What the inspection found in an image it accepted."""

    format: ImageFormat
    virtual_size_bytes: int


def inspect_image(
    path: Path,
    declared: ImageFormat,
    *,
    runner: CommandRunner,
    img_binary: str = "qemu-img",
    max_virtual_bytes: int = DEFAULT_MAX_VIRTUAL_BYTES,
) -> ImageInfo:
    """Inspect the image at ``path``, declared to be in format ``declared``.

    Args:
        path: The image file (absolute: qemu-img must not read a name as a protocol).
        declared: The format the job or template declares.
        runner: Runs qemu-img.
        img_binary: The qemu-img to run.
        max_virtual_bytes: The largest virtual disk size accepted.

    Returns:
        The format and virtual size of an image that names no other file.

    Raises:
        InspectionError: The image is refused, or qemu-img cannot run.
    """
    with path.open("rb") as image:
        head = image.read(_PROBE_BYTES)
    _check_header(head, declared)
    info = _qemu_img_info(path, declared, runner, img_binary)
    return checked_info(info, declared, path=path, max_virtual_bytes=max_virtual_bytes)


def detect_format(head: bytes) -> str | None:
    """The QEMU format name the first bytes of an image announce, None for raw (QEMU's
    name for bytes it recognises as no format)."""
    if head.startswith(_QCOW_MAGIC):
        return "qcow" if head[4:8] == b"\x00\x00\x00\x01" else "qcow2"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[_VDI_SIGNATURE_OFFSET : _VDI_SIGNATURE_OFFSET + 4] == _VDI_SIGNATURE:
        return "vdi"
    if _vmdk_descriptor(head):
        return "vmdk"
    return None


def checked_info(
    info: Mapping[str, object],
    declared: ImageFormat,
    *,
    path: Path,
    max_virtual_bytes: int,
) -> ImageInfo:
    """The image described by qemu-img's JSON ``info``, if it is safe to boot.

    Raises:
        InspectionError: It names another file, is not in the declared format, is
            encrypted or corrupt, or its virtual size is missing or over the limit.
    """
    for key in _BACKING_KEYS:
        if key in info:
            name = info.get("backing-filename") or info.get("full-backing-filename") or "?"
            raise InspectionError(
                f"it names a backing file, {_quoted(name)}; QEMU would let the guest read "
                "that file on this host, so images must be self-contained"
            )
    specific = _mapping(_mapping(info.get("format-specific")).get("data"))
    if "data-file" in specific:
        raise InspectionError(
            f"it names an external data file, {_quoted(specific['data-file'])}; QEMU would "
            "let the guest read and write that file on this host"
        )
    others = _other_files(info, specific, path)
    if others:
        raise InspectionError(
            f"its data lies in other files ({', '.join(others)}); {_SINGLE_FILE_VMDK}"
        )
    if info.get("encrypted") is True:
        raise InspectionError("it is encrypted, and a node has no key to boot it with")
    if specific.get("corrupt") is True:
        raise InspectionError("qemu-img reports it as corrupt")
    if info.get("format") != _qemu_format(declared):
        raise InspectionError(f"qemu-img reads it as {info.get('format')!r}, not {declared.value}")
    size = info.get("virtual-size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InspectionError("qemu-img reports no virtual size for it")
    if size > max_virtual_bytes:
        raise InspectionError(
            f"its virtual size, {_size(size)}, is over this node's limit of "
            f"{_size(max_virtual_bytes)}"
        )
    return ImageInfo(format=declared, virtual_size_bytes=size)


def _check_header(head: bytes, declared: ImageFormat) -> None:
    detected = detect_format(head)
    expected = _qemu_format(declared)
    if expected == "raw":
        if detected is not None:
            raise InspectionError(f"it is a {detected} image, not {declared.value}")
        return
    if detected != expected:
        found = f"a {detected} image" if detected else "raw data"
        raise InspectionError(f"it is {found}, not a {declared.value} image")
    if declared is ImageFormat.VMDK and not head.startswith(_VMDK_SPARSE_MAGIC):
        # A descriptor (text) names its extents, and qemu-img opens them even for "info".
        raise InspectionError(f"it is a VMDK descriptor or an old VMDK; {_SINGLE_FILE_VMDK}")


def _qemu_img_info(
    path: Path, declared: ImageFormat, runner: CommandRunner, img_binary: str
) -> Mapping[str, object]:
    argv = [img_binary, "info", "-U", "--output=json", "-f", _qemu_format(declared), str(path)]
    result = runner.run(argv, timeout_s=_INFO_TIMEOUT_S, check=False)
    if result.exit_code == 127:
        raise InspectionError(f"{img_binary}, which inspects images, cannot run: {result.stderr}")
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.exit_code}"
        raise InspectionError(f"qemu-img cannot read it as {declared.value}: {reason}")
    try:
        info = json.loads(result.stdout)
    except ValueError as exc:
        raise InspectionError(f"qemu-img's description of it is not JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise InspectionError("qemu-img's description of it is not a JSON object")
    return info


def _other_files(
    info: Mapping[str, object], specific: Mapping[str, object], path: Path
) -> list[str]:
    """Files other than ``path`` that the image's data lives in: VMDK extents, and (in
    qemu-img 8 and later, which lists them) block nodes other than the image file."""
    others = []
    extents = specific.get("extents")
    for extent in extents if isinstance(extents, list) else ():
        name = _mapping(extent).get("filename")
        if name != str(path):
            others.append(_quoted(name))
    children = info.get("children")
    for child in children if isinstance(children, list) else ():
        role = _mapping(child).get("name")
        if role != "file":
            others.append(f"a {_quoted(role)} node")
    return others


def _vmdk_descriptor(head: bytes) -> bool:
    # QEMU's vmdk_probe: comment and blank lines, then "version=N" (a superset here).
    for line in head.split(b"\n"):
        if line.startswith(b"#") or not line.strip(b" \r"):
            continue
        return line.startswith(b"version=")
    return False


def _qemu_format(declared: ImageFormat) -> str:
    # An ISO image is raw bytes to QEMU (a CD-ROM drive with format=raw).
    return "raw" if declared is ImageFormat.ISO else declared.value


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _quoted(name: object) -> str:
    text = repr(name) if isinstance(name, str) else repr(str(name))
    return text if len(text) <= _NAME_CHARS else text[:_NAME_CHARS] + "..."


def _size(size: int) -> str:
    for unit, name in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size >= unit:
            return f"{size / unit:.4g} {name}"
    return f"{size} bytes"
