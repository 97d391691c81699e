"""The cloud-init NoCloud seed: an ISO 9660 volume labelled ``cidata``, built with pycdlib.

Files at its root: ``meta-data`` (instance-id = the activity id, local-hostname),
``user-data`` and, when given, ``network-config``. Joliet and Rock Ridge carry the real
lower-case names, as genisoimage's ``-joliet -rock`` does, which is what cloud-init's own
documentation builds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import pycdlib

from bes.errors import HypervisorError

SEED_LABEL = "cidata"


def meta_data(instance_id: str, hostname: str) -> str:
    # JSON is YAML: no quoting rules to get wrong for odd ids.
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}, indent=1) + "\n"


def write_seed(
    path: Path,
    *,
    instance_id: str,
    hostname: str,
    user_data: str,
    network_config: str | None = None,
    extra: Mapping[str, bytes] | None = None,
) -> None:
    """Write the NoCloud seed ISO to ``path``."""
    files: dict[str, bytes] = {
        "meta-data": meta_data(instance_id, hostname).encode(),
        "user-data": user_data.encode(),
    }
    if network_config is not None:
        files["network-config"] = network_config.encode()
    files.update(extra or {})
    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=3, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
        for index, (name, data) in enumerate(sorted(files.items())):
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/F{index:06d}.;1",  # the ISO 9660 name; Joliet and Rock Ridge have the real one
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write(str(path))
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise HypervisorError(f"cannot write the NoCloud seed: {exc}") from exc
    finally:
        iso.close()
