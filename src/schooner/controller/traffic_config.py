"""Traffic sections of config documents, and the recent request rates ``schooner traffic``
shows.

A document's ``traffic`` sections are checked together, on the state the
document would produce (its applications, those that keep running, the
policies of the applications it does not mention), before anything of the
document is applied: a bad section rejects the whole document. They are set
once the document's applications exist in the controller (as placeholders
while they build): the controller publishes a policy on every tick, and a
target without an ingress yet gets no traffic until it has one (its weight
goes to the owner meanwhile), so the policy takes effect as soon as the
applications are deployed, with no further step.

:class:`RecentRates` keeps a few :class:`~schooner.controller.app_stats.AppSample`
readings per application (at most one a second, taken when a process reports its
metrics), so the rates over the last ~10 s cost nothing per request.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from schooner.controller.app_stats import AppSample, sample_app, window
from schooner.controller.state import ApplicationState
from schooner.controller.traffic import TrafficManager
from schooner.exceptions import ServeConfigError
from schooner.rpc.messages import AppSpec

if TYPE_CHECKING:
    from schooner.controller.controller import Controller
    from schooner.schema import ServeDeploySchema
    from schooner.telemetry import recorder

__all__ = ["RecentRates", "apply_document_traffic", "check_document_traffic", "policy_from_body"]

logger = logging.getLogger("schooner.controller")

Sections = dict[str, tuple[dict[str, float], dict[str, float]]]


def _sections(doc: ServeDeploySchema) -> Sections:
    """Per application of ``doc`` that has a ``traffic`` key: (split, shadows)."""
    result: Sections = {}
    for app in doc.applications:
        if app.sets_traffic:
            traffic = app.traffic
            split = dict(traffic.split) if traffic is not None else {}
            shadows = dict(traffic.shadows) if traffic is not None else {}
            result[app.name] = (split, shadows)
    return result


def _placeholder(name: str) -> ApplicationState:
    spec = AppSpec(name, None, ingress="", deployments=[], source="declarative")
    return ApplicationState(spec, {}, 0.0)


def check_document_traffic(
    controller: Controller, doc: ServeDeploySchema, *, merge: bool
) -> Sections:
    """Check ``doc``'s traffic sections against the state it would produce; returns them.
    Raises ServeConfigError (naming the application and the entry), changing nothing."""
    sections = _sections(doc)
    names = {app.name for app in doc.applications}
    deleted = (
        []
        if merge
        else [
            a.name
            for a in controller.apps.values()
            if a.name not in names and a.spec.source == "declarative" and not a.deleting
        ]
    )
    apps: dict[str, ApplicationState] = {
        name: app
        for name, app in controller.apps.items()
        if not app.deleting and name not in deleted
    }
    for name in names:
        apps.setdefault(name, _placeholder(name))
    after = TrafficManager()
    after.restore(controller.traffic.to_checkpoint())
    for name in deleted:
        after.app_deleted(name)
    if not sections:
        return sections
    for owner in sections:  # every section replaces its app's policy: check them as a whole
        after.settings.pop(owner, None)
    for owner, (split, shadows) in sections.items():
        try:
            after.set_policy(apps, owner, split, shadows)
        except ServeConfigError as exc:
            hint = (
                " An application named in a traffic section must be in the config or "
                "already running."
                if "there is no application" in str(exc)
                else ""
            )
            raise ServeConfigError(f"Invalid Serve config: {exc}{hint}") from None
    return sections


def apply_document_traffic(controller: Controller, sections: Sections) -> None:
    """Set the checked ``sections`` (the document's applications exist by now). Only the
    policies that change are touched; no replica restarts."""
    traffic = controller.traffic
    apps = controller.apps
    changed = {
        owner: (split, shadows)
        for owner, (split, shadows) in sections.items()
        if traffic.describe(owner) != _normalized(apps, owner, split, shadows)
    }
    try:
        for owner in changed:  # cleared first, so their order does not matter
            traffic.set_policy(apps, owner, {}, {})
        for owner, (split, shadows) in changed.items():
            traffic.set_policy(apps, owner, split, shadows)
    except ServeConfigError:  # checked before: only a bug gets here
        logger.exception("setting the traffic sections of a config failed")
    if changed:
        logger.info("traffic policies set from the config: %s", sorted(changed))
        controller.publish()


def _normalized(
    apps: Mapping[str, ApplicationState],
    owner: str,
    split: Mapping[str, float],
    shadows: Mapping[str, float],
) -> dict[str, Any] | None:
    """What ``describe`` would say after setting this (None when it cannot be checked alone)."""
    probe = TrafficManager()
    try:
        return probe.check(apps, owner, split, shadows).to_dict()
    except ServeConfigError:
        return None


def policy_from_body(body: Any) -> tuple[dict[str, float], dict[str, float]]:
    """``{"split": ..., "shadows": ...}`` of ``PUT /api/schooner/traffic/{app}`` (each a list
    of entries or a mapping, as in a config's ``traffic`` section; a missing key is empty).
    Raises ServeConfigError saying what is wrong."""
    from pydantic import ValidationError

    from schooner.schema import TrafficSchema

    if not isinstance(body, Mapping):
        raise ServeConfigError(
            'The body must be a JSON object {"split": {APP: WEIGHT, ...}, "shadows": '
            f"{{APP: FRACTION, ...}}}}, got {type(body).__name__}."
        )
    try:
        section = TrafficSchema.model_validate(body)
    except ValidationError as exc:
        detail = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ServeConfigError(f"Invalid traffic policy: {detail}.") from None
    return dict(section.split), dict(section.shadows)


class RecentRates:
    """A small ring of :class:`AppSample` readings per application, for the rates over the
    last ``window_s`` seconds (``GET /api/schooner/traffic/{app}``)."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[tuple[str, list[recorder.Family]]]],
        *,
        window_s: float = 10.0,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshots = snapshots
        self.window_s = window_s
        self.every_s = every_s
        self._clock = clock
        self._last = float("-inf")
        self._rings: dict[str, deque[AppSample]] = {}
        self._size = int(window_s / every_s) + 4

    def maybe_sample(self, apps: Mapping[str, ApplicationState]) -> None:
        """Take a reading of every application, unless one was taken less than
        ``every_s`` ago (called whenever a process reports its metrics)."""
        now = self._clock()
        if now - self._last < self.every_s:
            return
        self._last = now
        snapshots = list(self._snapshots())
        for name in list(self._rings):
            if name not in apps:
                del self._rings[name]
        for name, app in apps.items():
            if app.deleting or not app.spec.ingress:
                continue
            ring = self._rings.setdefault(name, deque(maxlen=self._size))
            ring.append(sample_app(snapshots, name, app.spec.ingress, now))

    def rates(self, app: str) -> dict[str, Any]:
        """``{request_rate, error_rate, p99_ms, seconds}`` of ``app`` between its newest
        reading and the one ``window_s`` before it (or its oldest); zeros when there is
        less than two readings."""
        ring = self._rings.get(app)
        if not ring or len(ring) < 2:
            return {"request_rate": 0.0, "error_rate": 0.0, "p99_ms": None, "seconds": 0.0}
        newest = ring[-1]
        before = ring[0]
        for sample in ring:
            if newest.at - sample.at >= self.window_s:
                before = sample
        stats = window(before, newest).to_dict()
        return {key: stats[key] for key in ("request_rate", "error_rate", "p99_ms", "seconds")}
