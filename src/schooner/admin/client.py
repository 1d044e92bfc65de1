"""A small client of the admin REST API, used by the CLI and by drivers looking for an instance.

The address is the admin API's URL: ``--address``/``-a``, else the
``SCHOONER_ADDRESS`` environment variable, else ``http://127.0.0.1:8265``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from schooner.exceptions import RayServeException

DEFAULT_ADMIN_URL = "http://127.0.0.1:8265"
#: ``SCHOONER_ADDRESS=local``: never attach to a running instance, always start one.
LOCAL_ONLY = "local"


class AdminUnreachable(RayServeException):
    """Nothing answers at the admin address (no instance is running there)."""


class AdminError(RayServeException):
    """The admin API answered with an error status; ``status`` and ``body`` say which."""

    def __init__(self, message: str, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.status, self.body))


def resolve_address(address: str | None = None) -> str:
    """The admin URL to use: the explicit one, ``$SCHOONER_ADDRESS`` or the default."""
    env = os.environ.get("SCHOONER_ADDRESS")
    url = address or (env if env != LOCAL_ONLY else None) or DEFAULT_ADMIN_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


class AdminClient:
    def __init__(self, address: str | None = None, *, timeout_s: float = 10.0) -> None:
        self.url = resolve_address(address)
        self.timeout_s = timeout_s
        self.token = os.environ.get("SCHOONER_ADMIN_TOKEN")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Raises AdminUnreachable."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminUnreachable(
                f"No Schooner instance answers at {self.url} ({reason}). Start one with "
                "`schooner start`, or pass its admin address with --address/-a "
                "(or SCHOONER_ADDRESS)."
            ) from None

    def _ok(self, method: str, path: str, body: Any = None, **kw: Any) -> bytes:
        status, data = self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            text = data.decode(errors="replace").strip()
            raise AdminError(f"{method} {path} failed with {status}: {text}", status, text)
        return data

    def instance(self) -> dict[str, Any]:
        """Who answers here; AdminError if it is not a Schooner instance."""
        status, data = self.request("GET", "/api/schooner/instance")
        if status in (401, 403):
            raise AdminError(
                f"The Schooner instance at {self.url} needs an admin token: set "
                "SCHOONER_ADMIN_TOKEN to the token it was started with"
                + (" (the one given is wrong)." if status == 403 else "."),
                status,
                data.decode(errors="replace"),
            )
        if status != 200:
            raise AdminError(
                f"The server at {self.url} is not a Schooner instance (GET /api/schooner/instance "
                f"answered {status}).",
                status,
                data.decode(errors="replace"),
            )
        info: dict[str, Any] = json.loads(data)
        return info

    def details(
        self, api_type: str | None = None, *, include: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """``GET /api/serve/applications/``; ``include``: ``"traffic"`` (each application's
        traffic policy) and/or ``"rollout"`` (its latest rollout), Schooner's extensions."""
        params = [f"api_type={api_type}"] if api_type else []
        if include:
            params.append("include=" + ",".join(include))
        query = "?" + "&".join(params) if params else ""
        result: dict[str, Any] = json.loads(self._ok("GET", "/api/serve/applications/" + query))
        return result

    def get_traffic(self, app: str) -> dict[str, Any]:
        """``GET /api/schooner/traffic/{app}``: its split, shadows and recent rates."""
        result: dict[str, Any] = json.loads(self._traffic("GET", app))
        return result

    def put_traffic(
        self,
        app: str,
        split: dict[str, float],
        shadows: dict[str, float],
        *,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Replace ``app``'s traffic policy; returns it as the instance now has it.

        ``if_match``: the :func:`~schooner.admin.etag.policy_etag` of the policy the change
        was made to; if the policy changed since, AdminError with status 412."""
        body = {"split": split, "shadows": shadows}
        headers = {"if-match": if_match} if if_match is not None else None
        result: dict[str, Any] = json.loads(self._traffic("PUT", app, body, headers))
        return result

    def _traffic(
        self, method: str, app: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> bytes:
        path = "/api/schooner/traffic/" + urllib.parse.quote(app, safe="")
        status, data = self.request(method, path, body, headers=headers)
        if 200 <= status < 300:
            return data
        text = data.decode(errors="replace").strip()
        try:
            message = str(json.loads(text)["error"])
        except (ValueError, KeyError, TypeError):
            message = f"{method} {path} failed with {status}: {text}"
        raise AdminError(message, status, text)

    def put_config(self, document: Any) -> None:
        self._ok("PUT", "/api/serve/applications/", document)

    def delete_all(self) -> None:
        self._ok("DELETE", "/api/serve/applications/", timeout_s=120)

    def shutdown(self) -> None:
        self._ok("POST", "/api/schooner/shutdown", {})


def find_instance(address: str | None = None, *, detached_only: bool) -> dict[str, Any] | None:
    """The running instance at the admin address, if any.

    With no explicit address (argument or ``SCHOONER_ADDRESS``), a silent
    default address yields ``None``; so does an instance that is not
    detached when ``detached_only``. An explicit address that does not answer
    raises :class:`AdminUnreachable`.
    """
    explicit = address or os.environ.get("SCHOONER_ADDRESS")
    if explicit == LOCAL_ONLY:
        return None
    client = AdminClient(explicit, timeout_s=2.0)
    try:
        info = client.instance()
    except AdminUnreachable:
        if explicit:
            raise
        return None
    except AdminError:
        if explicit:
            raise
        return None  # something else (e.g. a Ray dashboard) listens on the default port
    if detached_only and not explicit and not info.get("detached"):
        return None
    return info
