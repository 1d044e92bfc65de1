"""``file:///abs/dir``: one file per key in ``<dir>/<namespace>/``, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from schooner.checkpoint.store import check_key, check_value, uri_error

__all__ = ["FileStore"]

EXAMPLE_URI = "file:///var/lib/schooner/checkpoints"

#: Longest file name most file systems allow (bytes).
_MAX_NAME_BYTES = 255
#: Temporary files start with a dot, which no encoded key does.
_TEMP_PREFIX = ".tmp-"


def encode_key(key: str) -> str:
    """A file name for ``key`` that is a single path component and never ``.`` or ``..``.

    Percent-encoding of everything but letters, digits, ``_``, ``-`` and ``~``:
    ``/`` becomes ``%2F`` and ``.`` becomes ``%2E``, so no name starts with a dot or
    leaves the directory. ``%`` itself is encoded, so the mapping is reversible.
    """
    return quote(key, safe="").replace(".", "%2E")


def decode_key(name: str) -> str:
    return unquote(name)


class FileStore:
    """A directory of files, one per key. Suits a single host (or a shared volume).

    ``put`` writes a temporary file, fsyncs it, renames it over the old one
    (``os.replace`` is atomic on POSIX) and fsyncs the directory, so a crash at any
    point leaves the old value or the new one. Keys whose encoded name is longer
    than 255 bytes raise ``ValueError``.
    """

    def __init__(self, directory: str | os.PathLike[str], *, namespace: str = "schooner") -> None:
        self.directory = Path(directory) / namespace
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_uri(cls, uri: str, *, namespace: str) -> FileStore:
        """Open ``file:///abs/path`` (or a plain absolute path)."""
        if uri.startswith("/"):
            path = uri
        else:
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise uri_error(
                    uri,
                    f"a file URI names a path on this host; {parts.netloc!r} would be a host "
                    "name (use three slashes: file:///absolute/path)",
                    EXAMPLE_URI,
                )
            path = unquote(parts.path)
        if not os.path.isabs(path):
            raise uri_error(uri, "the path must be absolute", EXAMPLE_URI)
        try:
            return cls(path, namespace=namespace)
        except OSError as exc:
            raise uri_error(
                uri, f"cannot use {path!r} as a checkpoint directory ({exc})", EXAMPLE_URI
            ) from exc

    def _path(self, key: str) -> Path:
        check_key(key)
        name = encode_key(key)
        if len(name.encode()) > _MAX_NAME_BYTES:
            raise ValueError(
                f"checkpoint key {key[:40]!r}... is too long for the file store "
                f"(its encoded file name has {len(name)} bytes, at most {_MAX_NAME_BYTES})"
            )
        return self.directory / name

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        check_value(value)
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._sync_directory()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return
        self._sync_directory()

    def keys(self, prefix: str = "") -> list[str]:
        with os.scandir(self.directory) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_file()]
        return sorted(k for k in map(decode_key, names) if k.startswith(prefix))

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    def _sync_directory(self) -> None:
        """Make the rename or unlink itself durable."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"
