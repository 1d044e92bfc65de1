"""Noticing code changes for ``schooner run --reload`` (polling file modification times)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: Directories never watched (environments, caches, VCS data).
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "venv", ".venv", "env"}
WATCHED_SUFFIXES = (".py", ".yaml", ".yml", ".json")


def snapshot(roots: Iterable[Path]) -> dict[str, float]:
    """Modification time of every watched file under ``roots``."""
    seen: dict[str, float] = {}
    for root in roots:
        if root.is_file():
            _stat_into(seen, str(root))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
            for name in filenames:
                if name.endswith(WATCHED_SUFFIXES):
                    _stat_into(seen, os.path.join(dirpath, name))
    return seen


def _stat_into(seen: dict[str, float], path: str) -> None:
    try:
        seen[path] = os.stat(path).st_mtime_ns
    except OSError:
        pass


def changed_files(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """Files added, removed or modified between two snapshots (sorted)."""
    keys = before.keys() | after.keys()
    return sorted(k for k in keys if before.get(k) != after.get(k))
