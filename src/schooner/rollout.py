"""Incremental rollouts that check themselves.

Deploy the new version as its own application (typically ``route_prefix=None``),
then move the traffic of the application callers use to it step by step::

    serve.run(app_v2, name="app_v2", route_prefix=None)
    rollout = serve.rollout("app", to="app_v2", steps=[5, 25, 50, 100], interval_s=30,
                            max_error_rate=0.01, max_p99_ms=250)
    final = rollout.wait()
    print(final.state, final.message)

Every ``interval_s`` the controller compares the new application's error rate and
p99 latency since the step started with the limits; if one is exceeded all traffic
goes back to the old version at once (``ROLLED_BACK``, and the message says why),
otherwise the next step starts. The rollout runs in the controller: it goes on when
the driver exits, and survives a head restart. See ``docs/traffic.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from schooner.api import _controller_call, _require_instance
from schooner.controller.rollout import RolloutState, RolloutStatus, StepCheck

__all__ = ["Rollout", "RolloutState", "RolloutStatus", "StepCheck", "get_rollout", "rollout"]

#: How often :meth:`Rollout.wait` asks the controller.
POLL_S = 0.25


class Rollout:
    """A handle on the rollout of one application; every call asks the controller."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name

    def __repr__(self) -> str:
        return f"Rollout({self.app_name!r})"

    @property
    def status(self) -> RolloutStatus:
        """Where the rollout stands now (fetched fresh on each access)."""
        data = _controller_call("rollout_status", self.app_name)
        if data is None:  # the instance was replaced by one without this rollout
            raise LookupError(f"There is no rollout of application '{self.app_name}' any more.")
        return RolloutStatus.from_dict(data)

    def pause(self) -> RolloutStatus:
        """Freeze the current weight (no checks run until :meth:`resume`)."""
        return self._control("pause")

    def resume(self) -> RolloutStatus:
        """Go on after :meth:`pause`; the current step's interval starts again."""
        return self._control("resume")

    def abort(self) -> RolloutStatus:
        """Stop the rollout and put all traffic back on the old version (ABORTED)."""
        return self._control("abort")

    def wait(self, timeout_s: float | None = None) -> RolloutStatus:
        """Return the status once the rollout has ended (SUCCEEDED, ROLLED_BACK or
        ABORTED). Raises :class:`TimeoutError` if it has not after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status
            if status.final:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"The rollout of '{self.app_name}' has not ended after {timeout_s:g} s "
                    f"({status.state.value}: {status.message})."
                )
            time.sleep(POLL_S)

    def _control(self, action: str) -> RolloutStatus:
        _require_instance()
        return RolloutStatus.from_dict(_controller_call("rollout_control", self.app_name, action))


def rollout(
    app_name: str,
    to: str,
    steps: Sequence[float] = (5, 25, 50, 100),
    interval_s: float = 30,
    max_error_rate: float | None = None,
    max_p99_ms: float | None = None,
    min_requests: int = 10,
    retire: bool = False,
) -> Rollout:
    """Move ``app_name``'s traffic to application ``to`` step by step (``steps``: the new
    application's share in percent), checking each step after ``interval_s`` seconds.

    A step holds while fewer than ``min_requests`` requests reached ``to`` since it
    started; it rolls back (all traffic to the old version at once) when the error
    rate (5xx answers and calls that raised, 0 to 1) exceeds ``max_error_rate`` or
    the p99 latency exceeds ``max_p99_ms``. With ``retire=True`` the old
    application's deployments are scaled to 0 replicas once the rollout succeeded.

    The first step is set before this returns. Raises
    :class:`~schooner.exceptions.ServeConfigError` when the rollout cannot start
    (an unknown application, bad steps or limits, another split or rollout of
    ``app_name``, limits with metrics off); nothing changes then.
    """
    _require_instance()
    options: dict[str, Any] = {
        "steps": list(steps),
        "interval_s": interval_s,
        "max_error_rate": max_error_rate,
        "max_p99_ms": max_p99_ms,
        "min_requests": min_requests,
        "retire": retire,
    }
    _controller_call("start_rollout", app_name, to, options)
    return Rollout(app_name)


def get_rollout(app_name: str) -> Rollout | None:
    """The latest rollout of ``app_name`` (also one that has ended), or None if it never
    had one."""
    _require_instance()
    if _controller_call("rollout_status", app_name) is None:
        return None
    return Rollout(app_name)
