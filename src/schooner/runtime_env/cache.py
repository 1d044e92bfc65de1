"""The on-disk cache of prepared environments: one directory per entry, built once.

Layout: ``<cache_dir>/<kind>/<key>/`` holds an entry (downloaded and
unpacked archives, pip installs, symlink farms) and a completion marker;
``<kind>/<key>.lock`` is the entry's lock file. An entry is built in a
temporary sibling directory and renamed into place, so a directory with the
final name is always complete; the ``fcntl.flock`` on the lock file makes
concurrent resolvers (threads or processes) build it once and the others
wait for it. Entries are never removed automatically.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: File written into an entry, last, before it is renamed into place.
MARKER = ".schooner-complete"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/schooner/runtime_env``, or ``~/.cache/schooner/runtime_env``.

    Read when called, so the environment at start-up decides.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "schooner" / "runtime_env"


def cache_key(*parts: str) -> str:
    """A stable file-name-safe key for ``parts`` (hex sha256)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def ensure_entry(
    cache_dir: Path, kind: str, key: str, build: Callable[[Path], None], *, source: str
) -> Path:
    """Return ``cache_dir/kind/key``, calling ``build(tmp_dir)`` to create it if absent.

    ``build`` fills the (existing, empty) temporary directory it is given and
    raises on failure; the partial directory is then removed and nothing is
    cached. ``source`` is written into the marker, to tell what an entry is.
    """
    kind_dir = cache_dir / kind
    final = kind_dir / key
    if (final / MARKER).is_file():
        return final
    kind_dir.mkdir(parents=True, exist_ok=True)
    with (kind_dir / f"{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / MARKER).is_file():  # built while we waited
            return final
        # Holding the lock, anything else under this key is left by a crashed build.
        prefix = f".tmp-{key}-"
        for stale in [final, *kind_dir.glob(prefix + "*")]:
            if stale.exists():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=kind_dir))
        try:
            build(tmp)
            (tmp / MARKER).write_text(source + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
