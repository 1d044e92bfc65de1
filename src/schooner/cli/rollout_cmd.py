"""``schooner rollout``: start, follow and control an application's rollout, through the
admin API (``/api/schooner/rollouts/{app}``).

Without ``--detach`` the command follows the rollout: one line per step check and
the final state with its reason; exit code 0 when it SUCCEEDED, 1 when it was
ROLLED_BACK or ABORTED. Ctrl-C stops following; the rollout goes on in the
controller.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any
from urllib.parse import quote

from schooner.admin.client import AdminClient, AdminError
from schooner.controller.rollout import RolloutState, RolloutStatus, StepCheck
from schooner.exceptions import RayServeException

#: How often a followed rollout is asked for its status (at most; shorter intervals ask
#: more often).
FOLLOW_POLL_S = 1.0

_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, option: str = "--interval") -> float:
    """Seconds from ``30s``, ``2m``, ``500ms``, ``1h`` or a plain number of seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise RayServeException(
            f"{option} {text!r} is not a duration; write e.g. 30s, 2m, 500ms or a number of "
            "seconds."
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise RayServeException(f"{option} must be longer than 0, got {text!r}.")
    return seconds


def parse_steps(text: str) -> list[float]:
    """Percents from ``5,25,50,100`` (the controller checks the order and range)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RayServeException(
            f"--steps {text!r} must be comma-separated percents, e.g. 5,25,50,100."
        ) from None


def cmd_rollout(args: argparse.Namespace) -> int:
    client = AdminClient(args.address)
    path = "/api/schooner/rollouts/" + quote(args.app, safe="")
    for action in ("pause", "resume", "abort"):
        if getattr(args, action):
            status = _call(client, "POST", f"{path}/{action}", {})
            print(_summary(status))
            return 0
    if args.status:
        status = _call(client, "GET", path)
        print(_summary(status))
        for check in status.history:
            print(_check_line(status, check))
        return 0
    if args.to is None:
        raise RayServeException(
            "schooner rollout: give --to NEW_APP to start a rollout, or one of --status, "
            "--pause, --resume, --abort."
        )
    body: dict[str, Any] = {
        "to": args.to,
        "steps": parse_steps(args.steps),
        "interval_s": parse_duration(args.interval),
        "max_error_rate": _number(args.max_error_rate, "--max-error-rate"),
        "max_p99_ms": _number(args.max_p99_ms, "--max-p99-ms"),
        "min_requests": _whole(args.min_requests, "--min-requests"),
        "retire": args.retire,
    }
    status = _call(client, "POST", path, body)
    print(
        f"Rollout of '{status.app}' from '{status.from_app}' to '{status.to}' started: "
        f"steps {', '.join(f'{s:g}%' for s in status.steps)}, {status.interval_s:g} s each"
        f"{_limits(status)}."
    )
    if args.detach:
        print(f"Follow it with `schooner rollout {status.app} --status`.")
        return 0
    return follow(client, path, status)


def follow(client: AdminClient, path: str, status: RolloutStatus) -> int:
    """Print each new step check until the rollout ends; its exit code."""
    seen = len(status.history)
    shown_message = status.message
    poll_s = min(FOLLOW_POLL_S, max(0.1, status.interval_s / 4))
    try:
        while not status.final:
            time.sleep(poll_s)
            status = _call(client, "GET", path)
            for check in status.history[seen:]:
                print(_check_line(status, check))
            seen = len(status.history)
            if status.state == RolloutState.PAUSED and status.message != shown_message:
                print(status.message)
            shown_message = status.message
    except KeyboardInterrupt:
        print(
            f"\nStopped following; the rollout of '{status.app}' goes on. See it with "
            f"`schooner rollout {status.app} --status`, stop it with --abort.",
            file=sys.stderr,
        )
        return 130
    print(f"{status.state.value}: {status.message}")
    return 0 if status.state == RolloutState.SUCCEEDED else 1


def _call(client: AdminClient, method: str, path: str, body: Any = None) -> RolloutStatus:
    status_code, data = client.request(method, path, body)
    text = data.decode(errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if status_code != 200:
        error = doc.get("error") if isinstance(doc, dict) else None
        raise AdminError(
            error or f"{method} {path} failed with {status_code}: {text}", status_code, text
        )
    return RolloutStatus.from_dict(doc)


def _summary(status: RolloutStatus) -> str:
    return (
        f"Rollout of '{status.app}' from '{status.from_app}' to '{status.to}': "
        f"{status.state.value} at {status.weight_percent:g}% (step {status.step + 1} of "
        f"{len(status.steps)}): {status.message}"
    )


def _check_line(status: RolloutStatus, check: StepCheck) -> str:
    return (
        f"step {check.step + 1}/{len(status.steps)} {check.weight_percent:>5g}%  "
        f"{check.outcome:<11} after {check.seconds:.1f} s  "
        f"new '{status.to}': {_numbers(check.new_requests, check.new_error_rate, check.new_p99_ms)}"
        f"  old '{status.from_app}': "
        f"{_numbers(check.old_requests, check.old_error_rate, check.old_p99_ms)}"
    )


def _numbers(requests: int, error_rate: float, p99_ms: float | None) -> str:
    p99 = "-" if p99_ms is None else f"{p99_ms:.0f} ms"
    return f"{requests:,} req, errors {error_rate:.2%}, p99 {p99}"


def _limits(status: RolloutStatus) -> str:
    parts = []
    if status.max_error_rate is not None:
        parts.append(f"max error rate {status.max_error_rate:g}")
    if status.max_p99_ms is not None:
        parts.append(f"max p99 {status.max_p99_ms:g} ms")
    return ", " + ", ".join(parts) if parts else ", no limits"


def _number(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise RayServeException(f"{option} must be a number, got {text!r}.") from None


def _whole(text: str, option: str) -> int:
    if not text.strip().isdigit():
        raise RayServeException(f"{option} must be a whole number >= 0, got {text!r}.")
    return int(text)
