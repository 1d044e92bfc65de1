"""``py_modules``: make each listed module importable under its own name, and nothing else.

A local package directory ``path/mypkg`` must be importable as ``mypkg``
without exposing its siblings in ``path/``, so it is not ``path/`` that goes
on ``sys.path`` but a cache directory holding one symlink, ``mypkg -> path/mypkg``
(the same for a ``.py`` file). Archives (``.whl`` files, ``.zip``/``.whl`` URLs)
are unpacked into the cache and that directory goes on ``sys.path``.
"""

from __future__ import annotations

import os
from pathlib import Path

from schooner.exceptions import RuntimeEnvSetupError
from schooner.runtime_env.archive import archive_source, unpack_archive, url_scheme
from schooner.runtime_env.cache import cache_key, ensure_entry

_ARCHIVE_SUFFIXES = (".whl", ".zip")


def resolve_py_module(value: str, cache_dir: Path, base_dir: Path, field: str) -> Path:
    """The directory to put on ``sys.path`` for the ``py_modules`` entry ``value``."""
    if url_scheme(value) is None:
        path = Path(os.path.abspath(base_dir / os.path.expanduser(value)))
        if path.is_dir() or (path.is_file() and path.suffix == ".py"):
            return _link(path, cache_dir, value)
        if not path.exists():
            raise RuntimeEnvSetupError(
                f"{field}: {value!r} does not exist (looked for {str(path)!r}). "
                "Relative paths are relative to the application's directory."
            )
        if path.suffix.lower() not in _ARCHIVE_SUFFIXES:
            raise RuntimeEnvSetupError(
                f"{field}: {value!r} is a file but not a .py, .whl or .zip file. List the "
                "package directory or module file to import."
            )
    source = archive_source(value, base_dir, field)
    entry = ensure_entry(
        cache_dir,
        "py_modules",
        cache_key("archive", source.cache_key_material),
        lambda tmp: unpack_archive(source, tmp / "files", field),
        source=value,
    )
    return entry / "files"


def _link(path: Path, cache_dir: Path, value: str) -> Path:
    def build(tmp: Path) -> None:
        files = tmp / "files"
        files.mkdir()
        (files / path.name).symlink_to(path, target_is_directory=path.is_dir())

    entry = ensure_entry(cache_dir, "py_modules", cache_key("link", str(path)), build, source=value)
    return entry / "files"
