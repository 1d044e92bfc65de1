"""Traffic management: split an application's requests between applications, and copy
a fraction of them to shadow applications.

An application that has a route prefix and callers (its *owner* role) can send
part of its requests to other applications, deployed as usual (typically with
``route_prefix=None``)::

    serve.run(app_v1, name="app", route_prefix="/")
    serve.run(app_v2, name="app_canary", route_prefix=None)
    serve.set_traffic("app", {"app": 0.9, "app_canary": 0.1})
    serve.shadow_traffic("app", "app_test", 0.5)   # copies; answers discarded

Requests over HTTP to the route and through ``serve.get_app_handle("app")`` are
split; a request with a shard key (the ``X-SERVE-SHARD-KEY`` header, or
``handle.options(shard_key=...)``) always lands on the same application while
the weights are unchanged. Nothing restarts when the weights change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schooner.api import _controller_call, _require_instance

__all__ = ["get_traffic", "set_traffic", "shadow_traffic"]


def set_traffic(app_name: str, weights: Mapping[str, float] | None) -> None:
    """Split ``app_name``'s requests between applications by ``weights`` (summing to 1;
    ``app_name`` itself may be one of them). ``None`` or ``{}`` removes the split.

    Raises :class:`~schooner.exceptions.ServeConfigError` naming what is wrong (an
    unknown application, a negative weight, weights not summing to 1, a split that
    would chain); nothing changes then.
    """
    _require_instance()
    _controller_call("set_traffic", app_name, dict(weights) if weights else None)


def shadow_traffic(app_name: str, shadow_app: str, fraction: float) -> None:
    """Send a copy of ``fraction`` (0 to 1) of ``app_name``'s requests to ``shadow_app``.

    The copies' answers and failures never reach the caller; ``fraction=0`` stops
    the copies. A cycle of shadows is refused.
    """
    _require_instance()
    _controller_call("shadow_traffic", app_name, shadow_app, fraction)


def get_traffic(app_name: str) -> dict[str, Any]:
    """``{"split": {app: weight}, "shadows": {app: fraction}}`` as set for ``app_name``
    (both empty when it answers all its requests itself)."""
    _require_instance()
    result: dict[str, Any] = _controller_call("get_traffic", app_name)
    return result
