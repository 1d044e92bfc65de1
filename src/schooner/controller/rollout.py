"""Incremental rollouts that check themselves: move an application's traffic to another
application step by step, and roll back on their own when the new one misbehaves.

A rollout of *owner* (the application with the route and the handle callers hold)
to *to* starts from the application that answers today, *from*: the owner itself,
or X when the owner's split is ``{X: 1.0}`` (after an earlier rollout to X). Each
step sets the split ``{from: 1 - w, to: w}`` through the :class:`TrafficManager`,
and :meth:`RolloutManager.tick` (on the controller's reconcile tick) checks it:

1. a step's window runs from the step's start (a sample of the reported metrics)
   to now; once ``interval_s`` has passed the window is judged;
2. fewer than ``min_requests`` requests reached *to*: the step holds ("waiting for
   traffic") and is judged again as soon as enough have come;
3. the error rate above ``max_error_rate`` or p99 above ``max_p99_ms``: all
   traffic goes back to *from* at once (ROLLED_BACK, the message says why);
4. otherwise the next step starts; after the last step passed, SUCCEEDED (with
   ``retire``, every deployment of *from* is then scaled to 0 replicas).

Within a step the window is also checked on every tick: with at least
``min_requests`` requests and an error rate above ``max(2 x max_error_rate,
max_error_rate + 0.05)`` or p99 above ``2 x max_p99_ms``, the rollout rolls back
before the interval is over.

Times are wall-clock seconds (they go into the checkpoint). Metric samples do not:
after a head restart a running step's interval starts again, once the processes
have reported to the new head (``settle_s``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from schooner.controller.app_stats import AppSample, AppWindow, window
from schooner.controller.state import ApplicationState, DeploymentState
from schooner.controller.traffic import TrafficManager
from schooner.exceptions import ServeConfigError

__all__ = [
    "DEFAULT_STEPS",
    "RolloutManager",
    "RolloutOptions",
    "RolloutState",
    "RolloutStatus",
    "StepCheck",
]

logger = logging.getLogger("schooner.controller")

DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
#: Early rollback within a step: the error rate exceeds max(FACTOR x limit, limit + MARGIN),
#: or p99 exceeds FACTOR x its limit.
EARLY_FACTOR = 2.0
EARLY_ERROR_MARGIN = 0.05
#: At most this many checks are kept in a rollout's history (the oldest go first).
MAX_HISTORY = 200


class RolloutState(StrEnum):
    """Where a rollout stands; SUCCEEDED, ROLLED_BACK and ABORTED are final."""

    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"

    @property
    def final(self) -> bool:
        return self in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)


@dataclass(frozen=True)
class StepCheck:
    """One check of a step: the new (``to``) and old (``from``) application's window.

    ``outcome``: ``passed`` (the next step started, or the rollout succeeded),
    ``waiting`` (too few requests: the step holds) or ``rolled_back``."""

    step: int
    weight_percent: float
    at: float
    seconds: float
    outcome: str
    new_requests: int
    new_error_rate: float
    new_p99_ms: float | None
    old_requests: int
    old_error_rate: float
    old_p99_ms: float | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepCheck:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout as it stands (see :mod:`schooner.rollout`).

    ``from_app`` answered everything before; ``step`` is the index into ``steps``
    (percents) of the current step, ``weight_percent`` the share of ``to`` now."""

    app: str
    to: str
    from_app: str
    state: RolloutState
    step: int
    weight_percent: float
    steps: tuple[float, ...]
    interval_s: float
    max_error_rate: float | None
    max_p99_ms: float | None
    min_requests: int
    retire: bool
    message: str
    started_at: float
    step_started_at: float
    ended_at: float | None
    history: tuple[StepCheck, ...]

    @property
    def final(self) -> bool:
        return self.state.final

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["steps"] = list(self.steps)
        data["history"] = [asdict(check) for check in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutStatus:
        values = {k: data[k] for k in cls.__dataclass_fields__}
        values["state"] = RolloutState(values["state"])
        values["steps"] = tuple(float(s) for s in values["steps"])
        values["history"] = tuple(StepCheck.from_dict(c) for c in values["history"])
        return cls(**values)


@dataclass(frozen=True)
class RolloutOptions:
    """What a rollout was asked to do, validated (see :meth:`RolloutOptions.parse`)."""

    steps: tuple[float, ...] = DEFAULT_STEPS
    interval_s: float = 30.0
    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    min_requests: int = 10
    retire: bool = False

    @classmethod
    def parse(cls, given: Mapping[str, Any]) -> RolloutOptions:
        """Options from plain data (RPC, REST body); ServeConfigError naming the field."""
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise ServeConfigError(
                f"rollout: unknown option(s) {unknown}; the options are "
                f"{sorted(cls.__dataclass_fields__)}."
            )
        steps_given = given.get("steps", DEFAULT_STEPS)
        if isinstance(steps_given, (str, bytes)) or not isinstance(steps_given, Sequence):
            raise ServeConfigError(
                f"rollout: 'steps' must be a list of percents such as [5, 25, 50, 100], "
                f"got {steps_given!r}."
            )
        steps = tuple(_number(s, "a step") for s in steps_given)
        if not steps:
            raise ServeConfigError("rollout: 'steps' is empty; give at least one percent.")
        for step in steps:
            if not 0 < step <= 100:
                raise ServeConfigError(
                    f"rollout: step {step:g} is not a percent in (0, 100]; steps are the new "
                    f"application's share in percent, e.g. [5, 25, 50, 100] (got {list(steps)})."
                )
        if any(b <= a for a, b in pairwise(steps)):
            raise ServeConfigError(
                f"rollout: steps must increase strictly, got {[f'{s:g}' for s in steps]}."
            )
        interval = _number(given.get("interval_s", 30.0), "'interval_s'")
        if interval <= 0:
            raise ServeConfigError(f"rollout: 'interval_s' must be > 0 seconds, got {interval:g}.")
        max_error_rate = _optional(given.get("max_error_rate"), "'max_error_rate'")
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise ServeConfigError(
                f"rollout: 'max_error_rate' is a fraction of requests between 0 and 1 "
                f"(0.01 = 1%), got {max_error_rate:g}."
            )
        max_p99_ms = _optional(given.get("max_p99_ms"), "'max_p99_ms'")
        if max_p99_ms is not None and max_p99_ms < 0:
            raise ServeConfigError(
                f"rollout: 'max_p99_ms' must be >= 0 milliseconds, got {max_p99_ms:g}."
            )
        min_requests = given.get("min_requests", 10)
        if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 0:
            raise ServeConfigError(
                f"rollout: 'min_requests' must be a whole number >= 0, got {min_requests!r}."
            )
        retire = given.get("retire", False)
        if not isinstance(retire, bool):
            raise ServeConfigError(f"rollout: 'retire' must be true or false, got {retire!r}.")
        if retire and steps[-1] != 100:
            raise ServeConfigError(
                f"rollout: 'retire' needs a last step of 100 (the old application must "
                f"answer nothing before its replicas stop), got {steps[-1]:g}."
            )
        return cls(steps, interval, max_error_rate, max_p99_ms, min_requests, retire)

    @property
    def has_limits(self) -> bool:
        return self.max_error_rate is not None or self.max_p99_ms is not None


@dataclass
class _Rollout:
    """A rollout's mutable record (what :class:`RolloutStatus` is made from)."""

    app: str
    to: str
    from_app: str
    options: RolloutOptions
    state: RolloutState
    step: int
    message: str
    started_at: float
    step_started_at: float
    ended_at: float | None = None
    history: list[StepCheck] = field(default_factory=list)
    #: The split this rollout last set for ``app`` (a different one means someone else
    #: changed it). Not a status field.
    expected_split: dict[str, float] = field(default_factory=dict)
    #: Metric samples at the step's start (None: not taken yet); not checkpointed.
    base_new: AppSample | None = None
    base_old: AppSample | None = None
    #: Wall-clock time before which no baseline is taken (processes report to a new head).
    settle_until: float = 0.0
    #: When a "waiting" check was last recorded in the history.
    waiting_noted_at: float | None = None

    @property
    def weight_percent(self) -> float:
        return self.options.steps[self.step]

    def status(self) -> RolloutStatus:
        o = self.options
        return RolloutStatus(
            app=self.app,
            to=self.to,
            from_app=self.from_app,
            state=self.state,
            step=self.step,
            weight_percent=self.weight_percent if self.state != RolloutState.ROLLED_BACK else 0.0,
            steps=o.steps,
            interval_s=o.interval_s,
            max_error_rate=o.max_error_rate,
            max_p99_ms=o.max_p99_ms,
            min_requests=o.min_requests,
            retire=o.retire,
            message=self.message,
            started_at=self.started_at,
            step_started_at=self.step_started_at,
            ended_at=self.ended_at,
            history=tuple(self.history),
        )

    def to_checkpoint(self) -> dict[str, Any]:
        data = self.status().to_dict()
        data["weight_percent"] = self.weight_percent
        data["expected_split"] = dict(self.expected_split)
        return data

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any]) -> _Rollout:
        status = RolloutStatus.from_dict(data)
        options = RolloutOptions(
            status.steps,
            status.interval_s,
            status.max_error_rate,
            status.max_p99_ms,
            status.min_requests,
            status.retire,
        )
        return cls(
            app=status.app,
            to=status.to,
            from_app=status.from_app,
            options=options,
            state=status.state,
            step=status.step,
            message=status.message,
            started_at=status.started_at,
            step_started_at=status.step_started_at,
            ended_at=status.ended_at,
            history=list(status.history),
            expected_split=dict(data.get("expected_split", {})),
        )


#: ``sample(app_name)``: the application's cumulative counts now (see app_stats.sample_app).
Sampler = Callable[[str], AppSample]
#: ``scale(deployment, num_replicas)``: the controller's Controller.scale.
Scaler = Callable[[DeploymentState, int], None]


def _no_sample(app: str) -> AppSample:
    return AppSample(0.0)


class RolloutManager:
    """Every application's latest rollout; advanced by :meth:`tick`.

    ``apps`` is the controller's application table (read, and ``retired`` set on
    retirement), ``traffic`` its traffic manager (the only thing a rollout changes,
    besides scaling a retired application to 0). ``clock`` is wall-clock time;
    ``sample`` reads an application's metrics (the head sets it); ``metrics_enabled``:
    whether processes record metrics at all (``SCHOONER_METRICS``); ``settle_s``: how
    long after a head restart before a step's baseline is taken."""

    def __init__(
        self,
        apps: dict[str, ApplicationState],
        traffic: TrafficManager,
        clock: Callable[[], float],
        sample: Sampler = _no_sample,
        scale: Scaler | None = None,
        metrics_enabled: bool = True,
        settle_s: float = 0.0,
    ) -> None:
        self.apps = apps
        self.traffic = traffic
        self.clock = clock
        self.sample = sample
        self.scale = scale
        self.metrics_enabled = metrics_enabled
        self.settle_s = settle_s
        self.rollouts: dict[str, _Rollout] = {}
        #: Bumped on every change that belongs in the checkpoint.
        self.version = 0

    # -- client calls ---------------------------------------------------------------
    def start(self, app: str, to: str, options: RolloutOptions) -> RolloutStatus:
        """Start a rollout of ``app`` to ``to`` and set its first step at once.

        ServeConfigError (nothing changes) when: an application is unknown or being
        deleted, ``to`` is ``app`` or already answers everything, ``app`` has another
        split, a rollout of ``app`` is running or paused, or limits are given while
        metrics are off."""
        where = f"rollout of application '{app}'"
        owner = self._live(app, where, "the application to roll out")
        self._live(to, where, "the application to roll out to ('to')")
        del owner
        if to == app:
            raise ServeConfigError(f"{where}: 'to' is '{app}' itself; name another application.")
        current = self.rollouts.get(app)
        if current is not None and not current.state.final:
            raise ServeConfigError(
                f"{where}: a rollout to '{current.to}' is {current.state.value} "
                f"({current.message}). Abort it first (`schooner rollout {app} --abort`)."
            )
        if options.has_limits and not self.metrics_enabled:
            raise ServeConfigError(
                f"{where}: max_error_rate and max_p99_ms need the built-in metrics, which "
                "are off in this instance (SCHOONER_METRICS=0). Start the instance with "
                "metrics on, or roll out without limits."
            )
        split = self.traffic.describe(app)["split"]
        if not split:
            from_app = app
        elif len(split) == 1 and abs(next(iter(split.values())) - 1.0) < 1e-9:
            from_app = next(iter(split))
        else:
            raise ServeConfigError(
                f"{where}: '{app}' already splits its traffic {split}; a rollout starts from "
                f"one application answering everything. Remove the split first "
                f"(serve.set_traffic('{app}', None)) or give it all to one application."
            )
        if from_app == to:
            raise ServeConfigError(
                f"{where}: '{to}' already answers all of '{app}''s requests; nothing to roll out."
            )
        now = self.clock()
        record = _Rollout(
            app=app,
            to=to,
            from_app=from_app,
            options=options,
            state=RolloutState.RUNNING,
            step=0,
            message="",
            started_at=now,
            step_started_at=now,
        )
        self._set_weight(record)  # raises (nothing changed) if the split is refused
        self.rollouts[app] = record
        self._begin_step(record, now)
        logger.info(
            "rollout of %s from %s to %s started at %g%%",
            app,
            from_app,
            to,
            record.weight_percent,
        )
        return record.status()

    def status(self, app: str) -> RolloutStatus | None:
        record = self.rollouts.get(app)
        return record.status() if record is not None else None

    def control(self, app: str, action: str) -> RolloutStatus:
        """``pause``, ``resume`` or ``abort`` the rollout of ``app``."""
        record = self.rollouts.get(app)
        if record is None:
            raise ServeConfigError(f"There is no rollout of application '{app}'.")
        if action not in ("pause", "resume", "abort"):
            raise ServeConfigError(
                f"Unknown rollout action {action!r}; use 'pause', 'resume' or 'abort'."
            )
        if record.state.final:
            raise ServeConfigError(
                f"The rollout of '{app}' to '{record.to}' has already ended "
                f"({record.state.value}: {record.message})."
            )
        now = self.clock()
        if action == "pause" and record.state == RolloutState.RUNNING:
            record.state = RolloutState.PAUSED
            record.message = f"paused at {record.weight_percent:g}%"
        elif action == "resume" and record.state == RolloutState.PAUSED:
            record.state = RolloutState.RUNNING
            self._begin_step(record, now)
        elif action == "abort":
            self._back_to_from(record)
            self._end(
                record, RolloutState.ABORTED, f"aborted: all traffic is back on '{record.from_app}'"
            )
        self.version += 1
        return record.status()

    # -- controller events ------------------------------------------------------------
    def app_deleted(self, name: str) -> None:
        """Application ``name`` is being deleted (the traffic manager has been told): end
        the rollouts it takes part in."""
        for record in self.rollouts.values():
            if record.state.final or name not in (record.app, record.to, record.from_app):
                continue
            if name == record.app:
                message = f"aborted: application '{name}' is being deleted"
            elif name == record.to:
                self._back_to_from(record)
                message = (
                    f"aborted: application '{name}' (the new version) is being deleted; all "
                    f"traffic is back on '{record.from_app}'"
                )
            else:
                split = self.traffic.describe(record.app)["split"]
                message = (
                    f"aborted: application '{name}' (the old version) is being deleted; "
                    f"its share went to '{record.app}' (split now {split or 'none'})"
                )
            self._end(record, RolloutState.ABORTED, message)

    def app_deployed(self, name: str) -> None:
        """Application ``name`` was (re)deployed: a retirement of it is over."""
        app = self.apps.get(name)
        if app is not None and app.retired is not None:
            app.retired = None
            app.update_status()
            self.version += 1

    # -- the tick ---------------------------------------------------------------------
    def tick(self) -> None:
        """Check every running rollout (each on its own: one failing does not stop others)."""
        now = self.clock()
        for record in list(self.rollouts.values()):
            if record.state != RolloutState.RUNNING:
                continue
            try:
                self._check(record, now)
            except ServeConfigError as exc:  # the traffic manager refused a step
                self._back_to_from(record)
                self._end(record, RolloutState.ABORTED, f"aborted: {exc}")
            except Exception:
                logger.exception("checking the rollout of %s failed", record.app)

    def _check(self, record: _Rollout, now: float) -> None:
        split = self.traffic.describe(record.app)["split"]
        if split != record.expected_split:
            self._end(
                record,
                RolloutState.ABORTED,
                f"aborted: the split of '{record.app}' was changed outside the rollout "
                f"(now {split or 'none'}); it was left as it is",
            )
            return
        if record.base_new is None or record.base_old is None:
            if now < record.settle_until:
                return
            record.base_new = self.sample(record.to)
            record.base_old = self.sample(record.from_app)
            record.step_started_at = now
            record.message = self._running_message(record)
            self.version += 1
            return
        elapsed = now - record.step_started_at
        due = elapsed >= record.options.interval_s
        if not self.metrics_enabled:
            if due:
                self._passed(record, now, None, None)
            return
        new = window(record.base_new, self.sample(record.to))
        old = window(record.base_old, self.sample(record.from_app))
        o = record.options
        enough = new.requests >= o.min_requests
        if not due:
            reason = self._exceeded(new, old, o, early=True) if enough else None
            if reason is not None:
                self._roll_back(record, now, new, old, reason, early_after=elapsed)
            return
        if not enough:
            message = (
                f"at {record.weight_percent:g}%: waiting for traffic: {int(new.requests)} of "
                f"{o.min_requests} requests reached '{record.to}' in {elapsed:.1f} s"
            )
            noted = record.waiting_noted_at
            if noted is None or now - noted >= o.interval_s:
                record.waiting_noted_at = now
                self._note(record, now, new, old, "waiting")
            if message != record.message:
                record.message = message
                self.version += 1
            return
        reason = self._exceeded(new, old, o, early=False)
        if reason is not None:
            self._roll_back(record, now, new, old, reason, early_after=None)
        else:
            self._passed(record, now, new, old)

    @staticmethod
    def _exceeded(new: AppWindow, old: AppWindow, o: RolloutOptions, *, early: bool) -> str | None:
        """Why the new application's window breaks a limit (None: it does not)."""
        if o.max_error_rate is not None:
            limit = o.max_error_rate
            if early:
                limit = max(EARLY_FACTOR * limit, limit + EARLY_ERROR_MARGIN)
            if new.error_rate > limit:
                return (
                    f"error rate {new.error_rate:.2f} > max {o.max_error_rate:g} over the last "
                    f"{new.seconds:.1f} s ({int(new.requests):,} requests; old version "
                    f"{old.error_rate:.2f})"
                )
        if o.max_p99_ms is not None and new.p99_ms is not None:
            limit = o.max_p99_ms * (EARLY_FACTOR if early else 1.0)
            if new.p99_ms > limit:
                old_p99 = "no data" if old.p99_ms is None else f"{old.p99_ms:.0f} ms"
                return (
                    f"p99 {new.p99_ms:.0f} ms > max {o.max_p99_ms:g} ms over the last "
                    f"{new.seconds:.1f} s ({int(new.requests):,} requests; old version {old_p99})"
                )
        return None

    # -- transitions ------------------------------------------------------------------
    def _passed(
        self, record: _Rollout, now: float, new: AppWindow | None, old: AppWindow | None
    ) -> None:
        self._note(record, now, new, old, "passed")
        if record.step + 1 < len(record.options.steps):
            record.step += 1
            self._set_weight(record)
            self._begin_step(record, now)
            logger.info(
                "rollout of %s: now %g%% to %s", record.app, record.weight_percent, record.to
            )
            return
        message = f"succeeded: '{record.to}' answers {record.weight_percent:g}% of the requests"
        if record.options.retire:
            self._retire(record, now)
            message += f"; '{record.from_app}' was retired (its deployments scaled to 0 replicas)"
        self._end(record, RolloutState.SUCCEEDED, message)

    def _roll_back(
        self,
        record: _Rollout,
        now: float,
        new: AppWindow,
        old: AppWindow,
        reason: str,
        early_after: float | None,
    ) -> None:
        self._note(record, now, new, old, "rolled_back")
        self._back_to_from(record)
        early = (
            f" ({early_after:.1f} s into the {record.options.interval_s:g} s step)"
            if early_after is not None
            else ""
        )
        message = f"rolled back at {record.weight_percent:g}%{early}: {reason}"
        self._end(record, RolloutState.ROLLED_BACK, message)

    def _end(self, record: _Rollout, state: RolloutState, message: str) -> None:
        record.state = state
        record.message = message
        record.ended_at = self.clock()
        record.base_new = record.base_old = None
        self.version += 1
        logger.info("rollout of %s to %s: %s", record.app, record.to, message)

    def _begin_step(self, record: _Rollout, now: float) -> None:
        record.step_started_at = now
        record.base_new = record.base_old = None
        record.waiting_noted_at = None
        record.settle_until = max(record.settle_until, now)
        # The baseline is taken now unless the metrics are still settling (after a restart).
        if now >= record.settle_until:
            record.base_new = self.sample(record.to)
            record.base_old = self.sample(record.from_app)
        record.message = self._running_message(record)
        self.version += 1

    def _running_message(self, record: _Rollout) -> str:
        o = record.options
        return (
            f"step {record.step + 1} of {len(o.steps)}: {record.weight_percent:g}% to "
            f"'{record.to}', checked after {o.interval_s:g} s"
        )

    def _note(
        self,
        record: _Rollout,
        now: float,
        new: AppWindow | None,
        old: AppWindow | None,
        outcome: str,
    ) -> None:
        empty = AppWindow(0.0, 0.0, 0.0, None)
        new, old = new or empty, old or empty
        record.history.append(
            StepCheck(
                step=record.step,
                weight_percent=record.weight_percent,
                at=now,
                seconds=round(now - record.step_started_at, 3),
                outcome=outcome,
                new_requests=int(new.requests),
                new_error_rate=round(new.error_rate, 6),
                new_p99_ms=None if new.p99_ms is None else round(new.p99_ms, 3),
                old_requests=int(old.requests),
                old_error_rate=round(old.error_rate, 6),
                old_p99_ms=None if old.p99_ms is None else round(old.p99_ms, 3),
            )
        )
        del record.history[:-MAX_HISTORY]
        self.version += 1

    def _set_weight(self, record: _Rollout) -> None:
        w = record.weight_percent / 100.0
        weights = {record.from_app: 1.0 - w, record.to: w}
        self.traffic.set_split(self.apps, record.app, weights)
        record.expected_split = dict(self.traffic.describe(record.app)["split"])

    def _back_to_from(self, record: _Rollout) -> None:
        """All of the owner's traffic to ``from`` (no split when that is the owner)."""
        weights = None if record.from_app == record.app else {record.from_app: 1.0}
        try:
            self.traffic.set_split(self.apps, record.app, weights)
        except ServeConfigError as exc:  # e.g. 'from' is gone: leave what there is
            logger.warning("rollout of %s: could not put traffic back: %s", record.app, exc)
        record.expected_split = dict(self.traffic.describe(record.app)["split"])

    def _retire(self, record: _Rollout, now: float) -> None:
        """Scale every deployment of ``from`` to 0; it stays deployed (the owner keeps its
        route and handle; its split sends everything to ``to``)."""
        app = self.apps.get(record.from_app)
        if app is None or app.deleting:
            return
        app.retired = (
            f"Retired by the rollout of '{record.app}' to '{record.to}': its deployments were "
            f"scaled to 0 replicas and '{record.app}''s requests go to '{record.to}'. "
            "Redeploy it to bring its replicas back, or delete it."
        )
        for dep in app.deployments.values():
            if self.scale is not None:
                self.scale(dep, 0)
            else:
                dep.target_num_replicas = 0
        app.update_status()

    # -- checkpoint ---------------------------------------------------------------------
    def to_checkpoint(self) -> dict[str, dict[str, Any]]:
        return {app: record.to_checkpoint() for app, record in self.rollouts.items()}

    def restore(self, saved: Mapping[str, Mapping[str, Any]]) -> None:
        """Take back the rollouts of a checkpoint; a running step starts its interval again
        once the processes have reported to this head (``settle_s``)."""
        now = self.clock()
        self.rollouts = {}
        for app, data in saved.items():
            try:
                record = _Rollout.from_checkpoint(data)
            except (KeyError, TypeError, ValueError) as exc:
                logger.error(
                    "checkpoint: the rollout of '%s' cannot be read (%r); dropped", app, exc
                )
                continue
            if not record.state.final:
                record.step_started_at = now
                record.settle_until = now + self.settle_s
                if record.state == RolloutState.RUNNING:
                    record.message = (
                        self._running_message(record) + " (restarted after a head restart)"
                    )
            self.rollouts[app] = record
        self.version += 1

    # -- helpers ----------------------------------------------------------------------
    def _live(self, name: str, where: str, role: str) -> ApplicationState:
        app = self.apps.get(name)
        if app is None or app.deleting:
            known = sorted(n for n, a in self.apps.items() if not a.deleting)
            raise ServeConfigError(
                f"{where}: there is no application '{name}' ({role})"
                f"{' - it is being deleted' if app is not None else ''}. Deploy it first; "
                f"running applications: {known}."
            )
        return app


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServeConfigError(f"rollout: {what} must be a number, got {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ServeConfigError(f"rollout: {what} must be a finite number, got {value!r}.")
    return number


def _optional(value: Any, what: str) -> float | None:
    return None if value is None else _number(value, what)
