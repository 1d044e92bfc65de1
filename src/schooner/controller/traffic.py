"""Traffic policies: which applications answer an application's requests, and which
get copies.

An application (the *owner*: it has the route prefix and the handle callers use)
can split its requests between applications by weight (``{"app": 0.9,
"app_canary": 0.1}``; the owner may be one of them) and send a copy of a
fraction of them to *shadow* applications, whose answers are discarded. The
other applications are deployed as usual, typically with ``route_prefix=None``.

:class:`TrafficManager` holds the goal (what the user set), validates every
change before anything is changed, and turns the goal into the
:class:`~schooner.rpc.messages.TrafficPolicy` snapshot the controller publishes
to every router under :data:`TRAFFIC_KEY`. Routers choose per request; no
replica restarts when a policy changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schooner.controller.state import ApplicationState
from schooner.exceptions import ServeConfigError
from schooner.rpc.messages import TrafficPolicy, TrafficTarget

__all__ = ["TRAFFIC_KEY", "TrafficManager", "TrafficSetting"]

#: The long-poll key routers subscribe to: ``{owner ingress key: TrafficPolicy}``.
TRAFFIC_KEY = "traffic"
#: How far from 1 the weights of a split may sum (rounding in config files).
WEIGHT_TOLERANCE = 1e-6


@dataclass
class TrafficSetting:
    """What the user set for one owner application."""

    split: dict[str, float] = field(default_factory=dict)
    shadows: dict[str, float] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.split and not self.shadows

    def to_dict(self) -> dict[str, Any]:
        return {"split": dict(self.split), "shadows": dict(self.shadows)}


class TrafficManager:
    """The traffic goal of every application; changed only through validated calls."""

    def __init__(self) -> None:
        self.settings: dict[str, TrafficSetting] = {}
        #: Bumped on every change (the checkpointer and publisher compare it).
        self.version = 0

    # -- changes -----------------------------------------------------------------
    def set_split(
        self, apps: Mapping[str, ApplicationState], owner: str, weights: Mapping[str, Any] | None
    ) -> None:
        """Split ``owner``'s requests by ``weights`` (None or empty: no split)."""
        current = self.settings.get(owner, TrafficSetting())
        self.set_policy(apps, owner, weights or {}, current.shadows)

    def set_shadow(
        self, apps: Mapping[str, ApplicationState], owner: str, shadow: str, fraction: Any
    ) -> None:
        """Copy ``fraction`` of ``owner``'s requests to ``shadow`` (0: stop copying)."""
        current = self.settings.get(owner, TrafficSetting())
        shadows: dict[str, Any] = dict(current.shadows)
        shadows[shadow] = fraction
        if _number(fraction, f"shadow fraction for '{shadow}'") == 0:
            shadows.pop(shadow)
        self.set_policy(apps, owner, current.split, shadows)

    def set_policy(
        self,
        apps: Mapping[str, ApplicationState],
        owner: str,
        split: Mapping[str, Any],
        shadows: Mapping[str, Any],
    ) -> None:
        """Replace ``owner``'s whole policy (validated first; nothing changes on error)."""
        setting = self.check(apps, owner, split, shadows)
        if setting.is_empty():
            if self.settings.pop(owner, None) is not None:
                self.version += 1
            return
        if self.settings.get(owner) != setting:
            self.settings[owner] = setting
            self.version += 1

    def check(
        self,
        apps: Mapping[str, ApplicationState],
        owner: str,
        split: Mapping[str, Any],
        shadows: Mapping[str, Any],
    ) -> TrafficSetting:
        """The setting ``split``/``shadows`` would give ``owner``; ServeConfigError (naming
        the application and the entry) if it is not valid."""
        where = f"traffic of application '{owner}'"
        _require_app(apps, owner, where)
        weights = {app: _number(w, f"{where}: weight of '{app}'") for app, w in split.items()}
        for app, weight in weights.items():
            if weight < 0:
                raise ServeConfigError(
                    f"{where}: the weight of '{app}' is {weight}; weights must be >= 0."
                )
            _require_app(apps, app, where)
            if app != owner and self._splits(app):
                raise ServeConfigError(
                    f"{where}: '{app}' splits its own traffic; splits do not chain. "
                    f"Remove the split of '{app}' first, or name its targets here."
                )
        if weights and abs(sum(weights.values()) - 1.0) > WEIGHT_TOLERANCE:
            raise ServeConfigError(
                f"{where}: the weights sum to {sum(weights.values()):g}; they must sum to 1 "
                f"(got {weights})."
            )
        if weights:
            for other, setting in self.settings.items():
                if other != owner and owner in setting.split:
                    raise ServeConfigError(
                        f"{where}: '{owner}' receives traffic from the split of '{other}'; "
                        "splits do not chain."
                    )
        weights = {app: w for app, w in weights.items() if w > 0}
        if weights == {owner: 1.0}:
            weights = {}  # everything to the owner: no split
        fractions: dict[str, float] = {}
        for app, value in shadows.items():
            fraction = _number(value, f"{where}: shadow fraction of '{app}'")
            if not 0 <= fraction <= 1:
                raise ServeConfigError(
                    f"{where}: the shadow fraction of '{app}' is {fraction}; it must be "
                    "between 0 and 1 (0 removes the shadow)."
                )
            if app == owner:
                raise ServeConfigError(f"{where}: an application cannot shadow itself.")
            _require_app(apps, app, where)
            if fraction > 0:
                fractions[app] = fraction
        cycle = self._shadow_cycle(owner, fractions)
        if cycle:
            raise ServeConfigError(
                f"{where}: shadowing to {cycle[1]!r} makes a cycle of shadows "
                f"({' -> '.join(cycle)}); a copy would be copied back."
            )
        return TrafficSetting(weights, fractions)

    def _splits(self, app: str) -> bool:
        setting = self.settings.get(app)
        return setting is not None and bool(setting.split)

    def _shadow_cycle(self, owner: str, shadows: Mapping[str, float]) -> list[str]:
        """A path owner -> ... -> owner through shadows if ``shadows`` would close one."""
        edges = {app: list(s.shadows) for app, s in self.settings.items() if app != owner}
        edges[owner] = list(shadows)
        path: list[str] = []

        def visit(app: str) -> bool:
            path.append(app)
            for nxt in edges.get(app, ()):
                if nxt == owner or (nxt not in path and visit(nxt)):
                    if nxt == owner:
                        path.append(owner)
                    return True
            path.pop()
            return False

        return path if visit(owner) else []

    def app_deleted(self, name: str) -> None:
        """``name`` is gone: drop its policy, and drop it from others' (a split's weight for
        it goes back to the owner)."""
        changed = self.settings.pop(name, None) is not None
        for owner, setting in list(self.settings.items()):
            if name in setting.split:
                weight = setting.split.pop(name)
                setting.split[owner] = setting.split.get(owner, 0.0) + weight
                if setting.split == {owner: 1.0}:
                    setting.split = {}
                changed = True
            if setting.shadows.pop(name, None) is not None:
                changed = True
            if setting.is_empty():
                del self.settings[owner]
        if changed:
            self.version += 1

    # -- what routers get ---------------------------------------------------------------
    def policies(self, apps: Mapping[str, ApplicationState]) -> dict[str, TrafficPolicy]:
        """The published snapshot: per owner's ingress key, its policy. A target that is
        not deployed (or is being deleted) gets nothing: its weight goes to the owner."""
        result: dict[str, TrafficPolicy] = {}
        for owner, setting in self.settings.items():
            app = apps.get(owner)
            ingress = _ingress(app)
            if app is None or ingress is None:
                continue
            split: list[TrafficTarget] = []
            orphaned = 0.0
            for name, weight in setting.split.items():
                target = _ingress(apps.get(name))
                if target is None:
                    orphaned += weight
                else:
                    split.append(TrafficTarget(name, target, weight))
            if orphaned:
                split = [
                    TrafficTarget(t.app_name, t.ingress, t.weight + orphaned)
                    if t.app_name == owner
                    else t
                    for t in split
                ]
                if all(t.app_name != owner for t in split):
                    split.append(TrafficTarget(owner, ingress, orphaned))
            shadows = tuple(
                TrafficTarget(name, target, fraction)
                for name, fraction in setting.shadows.items()
                if (target := _ingress(apps.get(name))) is not None
            )
            result[ingress.key] = TrafficPolicy(owner, ingress, tuple(split), shadows)
        return result

    def describe(self, owner: str) -> dict[str, Any]:
        """``{"split": {...}, "shadows": {...}}`` as set for ``owner`` (empty if none)."""
        return self.settings.get(owner, TrafficSetting()).to_dict()

    # -- checkpoint -----------------------------------------------------------------------
    def to_checkpoint(self) -> dict[str, dict[str, Any]]:
        return {owner: s.to_dict() for owner, s in self.settings.items()}

    def restore(self, saved: Mapping[str, Mapping[str, Any]]) -> None:
        self.settings = {
            owner: TrafficSetting(dict(s.get("split", {})), dict(s.get("shadows", {})))
            for owner, s in saved.items()
        }
        self.version += 1


def _ingress(app: ApplicationState | None) -> Any:
    if app is None or app.deleting:
        return None
    dep = app.deployments.get(app.spec.ingress)
    return dep.id if dep is not None else None


def _require_app(apps: Mapping[str, ApplicationState], name: str, where: str) -> None:
    app = apps.get(name)
    if app is None or app.deleting:
        known = sorted(n for n, a in apps.items() if not a.deleting)
        raise ServeConfigError(
            f"{where}: there is no application '{name}'"
            f"{' (it is being deleted)' if app is not None else ''}. Deploy it first; "
            f"running applications: {known}."
        )


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServeConfigError(f"{what} must be a number, got {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ServeConfigError(f"{what} must be a finite number, got {value!r}.")
    return number
