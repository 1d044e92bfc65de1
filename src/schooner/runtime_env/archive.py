"""Zip archives a ``runtime_env`` names: where they come from, downloading and unpacking.

A wheel is a zip too, so ``.whl`` files go through the same code.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from schooner.exceptions import RuntimeEnvSetupError

DOWNLOAD_TIMEOUT_S = 60.0

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_FETCHABLE_SCHEMES = ("file", "http", "https")


def url_scheme(value: str) -> str | None:
    """The lower-cased scheme of ``value`` if it is written as ``scheme://...``, else None."""
    match = _URL_SCHEME.match(value)
    return match.group(1).lower() if match else None


def is_archive_url(value: str, suffixes: tuple[str, ...]) -> bool:
    """Whether ``value`` is a file:// or http(s):// URL whose path ends with one of ``suffixes``."""
    if url_scheme(value) not in _FETCHABLE_SCHEMES:
        return False
    return urllib.parse.urlparse(value).path.lower().endswith(suffixes)


@dataclass(frozen=True)
class ArchiveSource:
    """A zip to unpack: a local file (``path``) or an http(s) URL to download (``url``).

    ``cache_key_material`` identifies the content: the URL for downloads
    (URLs are taken to be immutable, as in Ray), the path with its size and
    modification time for local files (so a rewritten zip is read again).
    """

    name: str
    path: Path | None
    url: str | None
    cache_key_material: str


def archive_source(value: str, base_dir: Path, field: str) -> ArchiveSource:
    """Locate the archive ``value`` (a path relative to ``base_dir``, file:// or http(s) URL)."""
    scheme = url_scheme(value)
    if scheme in ("http", "https"):
        return ArchiveSource(value, None, value, f"url\0{value}")
    if scheme == "file":
        parsed = urllib.parse.urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise RuntimeEnvSetupError(
                f"{field}: {value!r} names host {parsed.netloc!r}; a file:// URL must be "
                "local (file:///absolute/path.zip). Serve remote files over http(s)."
            )
        path = Path(urllib.request.url2pathname(parsed.path))
    else:
        path = base_dir / value
    path = Path(os.path.abspath(path))
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        raise RuntimeEnvSetupError(
            f"{field}: archive {value!r} does not exist (looked for {str(path)!r}). "
            "Check the path; relative paths are relative to the application's directory."
        )
    return ArchiveSource(value, path, None, f"file\0{path}\0{stat.st_mtime_ns}\0{stat.st_size}")


def unpack_archive(source: ArchiveSource, dest: Path, field: str) -> None:
    """Unpack ``source`` into the new directory ``dest``, downloading it first if needed.

    A download is written next to ``dest`` and removed afterwards. Member
    paths are sanitized by :mod:`zipfile` (no absolute paths, no ``..``);
    Unix permission bits stored in the archive are restored.
    """
    archive = source.path
    download: Path | None = None
    if archive is None:
        assert source.url is not None
        download = dest.with_name(dest.name + ".download")
        _download(source.url, download, field)
        archive = download
    dest.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                extracted = zf.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(extracted, mode | 0o600)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise RuntimeEnvSetupError(
            f"{field}: {source.name!r} is not a valid zip file ({exc}). "
            + (
                "Check that the URL points to the archive itself, not to a page about it."
                if source.url
                else "Recreate it, e.g. with 'zip -r archive.zip directory'."
            )
        ) from exc
    finally:
        if download is not None:
            download.unlink(missing_ok=True)


def content_root(unpacked: Path) -> Path:
    """The single top-level directory of an unpacked archive, else ``unpacked`` itself.

    GitHub's archive zips hold one directory (``repo-main/``); its contents
    are what the user means. A macOS ``__MACOSX`` entry is not counted.
    """
    entries = [p for p in unpacked.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked


def _download(url: str, target: Path, field: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "schooner-runtime-env"})
    try:
        with (
            urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response,
            target.open("wb") as out,
        ):
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise RuntimeEnvSetupError(
            f"{field}: downloading {url} failed: HTTP {exc.code} {exc.reason}. "
            "Check that the URL is right and readable without credentials."
        ) from exc
    except urllib.error.URLError as exc:
        raise RuntimeEnvSetupError(
            f"{field}: could not reach {url}: {exc.reason}. Check the host name and "
            "that this machine can reach it."
        ) from exc
    except OSError as exc:
        raise RuntimeEnvSetupError(
            f"{field}: downloading {url} failed: {exc!r} (timeout {DOWNLOAD_TIMEOUT_S:g} s)."
        ) from exc
