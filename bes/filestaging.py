"""Which ``file:`` staging URIs a site takes: the site's policy, applied at submission.

A ``file:`` URI names a file of this site (a shared file system the workers mount), so it is
taken only under the directories the site set aside for them (``bes serve --file-root``);
with none, every ``file:`` URI is refused. Staging by ``file:`` is then a protocol this site
does not offer (or not there): the document is valid JSDL, so the refusal is
UnsupportedFeatureFault, one feature per refused Source or Target, as for other schemes a
backend does not stage. The worker checks its own ``--file-root`` again at run time.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from bes.jsdl.model import JobDefinition


class FileRoots:
    """The directories ``file:`` staging URIs may name.

    Args:
        roots: Absolute directories (normalized here); none refuses every ``file:`` URI.
    """

    def __init__(self, roots: Sequence[str] = ()) -> None:
        self.roots = tuple(posixpath.normpath(posixpath.abspath(str(r))) for r in roots)

    def refused(self, job: JobDefinition) -> list[str]:
        """One line per ``file:`` Source or Target of ``job`` outside the roots (the BES
        UnsupportedFeatureFault's features); empty when the job may be taken."""
        allowed = (
            "under " + ", ".join(self.roots)
            if self.roots
            else "nowhere (this service has no directories for them)"
        )
        features = []
        for index, staging in enumerate(job.job_description.data_staging, 1):
            for role, uri in (("Source", staging.source), ("Target", staging.target)):
                if uri is None or _scheme(uri) != "file" or self._under(uri):
                    continue
                features.append(
                    f"jsdl:DataStaging[{index}]/jsdl:{role}/jsdl:URI {uri!r} for "
                    f"{staging.file_name!r}: file: URIs are staged {allowed}"
                )
        return features

    def _under(self, uri: str) -> bool:
        """Whether a ``file:`` URI names, once normalized, a path under one of the roots."""
        try:
            parsed = urlsplit(uri)
        except ValueError:
            return False
        path = unquote(parsed.path)
        if parsed.netloc.lower() not in ("", "localhost") or not path.startswith("/"):
            return False
        if any(ord(c) < 0x20 for c in path):
            return False
        path = posixpath.normpath(path)
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.roots)


def _scheme(uri: str) -> str:
    try:
        return urlsplit(uri).scheme.lower()
    except ValueError:
        return ""
