"""The web dashboard's files (``schooner/admin/dashboard/``), ready to serve.

The page is plain HTML, one script and one style sheet shipped in the package:
no build step, nothing fetched from elsewhere. ``index.html`` names the other
two with a hash of their content (``static/dashboard.js?v=<hash>``), so the
browser may keep them for a year and still gets new ones after an upgrade;
the page itself is never cached.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["StaticFile", "dashboard_files"]

_ASSETS = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}
_HTML = b"text/html; charset=utf-8"
_NO_STORE = b"no-store"
_IMMUTABLE = b"public, max-age=31536000, immutable"


@dataclass(frozen=True)
class StaticFile:
    """One file as it is answered: its bytes, content type and ``Cache-Control``."""

    body: bytes
    content_type: bytes
    cache_control: bytes


@functools.cache
def dashboard_files() -> dict[str, StaticFile]:
    """The dashboard's files by request path (``/`` and ``/static/<name>``); read once."""
    folder = resources.files("schooner.admin") / "dashboard"
    files: dict[str, StaticFile] = {}
    index = (folder / "index.html").read_text(encoding="utf-8")
    for name, content_type in _ASSETS.items():
        body = (folder / name).read_bytes()
        files[f"/static/{name}"] = StaticFile(body, content_type, _IMMUTABLE)
        version = hashlib.sha256(body).hexdigest()[:12]
        index = index.replace(f'"static/{name}"', f'"static/{name}?v={version}"')
    files["/"] = StaticFile(index.encode(), _HTML, _NO_STORE)
    return files
