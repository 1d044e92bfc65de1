"""``working_dir``: a local directory used in place, or a zip fetched once into the cache."""

from __future__ import annotations

import os
from pathlib import Path

from schooner.exceptions import RuntimeEnvSetupError
from schooner.runtime_env.archive import (
    archive_source,
    content_root,
    unpack_archive,
    url_scheme,
)
from schooner.runtime_env.cache import cache_key, ensure_entry

_FIELD = "runtime_env.working_dir"


def resolve_working_dir(value: str, cache_dir: Path, base_dir: Path) -> Path:
    """The directory a process should run in for ``working_dir: value``.

    A local directory (optionally written ``local://<dir>``) is used where it
    is, not copied: edits show up at the next start. A ``.zip`` (local path,
    ``file://`` or ``http(s)://`` URL) is unpacked into the cache once; if it
    holds a single top-level directory, that directory is the result.
    """
    scheme = url_scheme(value)
    if scheme == "local":
        value = value[len("local://") :]
    if scheme in (None, "local"):
        path = Path(os.path.abspath(base_dir / os.path.expanduser(value)))
        if path.is_dir():
            return path
        if scheme == "local" or not path.name.lower().endswith(".zip"):
            raise RuntimeEnvSetupError(
                f"{_FIELD}: directory {value!r} does not exist (looked for {str(path)!r}). "
                "Relative paths are relative to the application's directory."
            )
    source = archive_source(value, base_dir, _FIELD)
    entry = ensure_entry(
        cache_dir,
        "working_dir",
        cache_key(source.cache_key_material),
        lambda tmp: unpack_archive(source, tmp / "files", _FIELD),
        source=value,
    )
    return content_root(entry / "files")
