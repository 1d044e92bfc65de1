"""``schooner traffic APP``: show or change an application's traffic policy.

Without options it prints the split, the shadows and, for the application and
each one it sends traffic to, the request rate, error rate and p99 latency over
the last ~10 seconds. ``--set app=0.9 app_canary=0.1`` replaces the split,
``--shadow APP=FRACTION`` (repeatable; ``APP=0`` removes it) adds or changes a
shadow, ``--clear`` removes everything first. Changes go through the admin API
(``PUT /api/schooner/traffic/{app}`` with ``If-Match``: a change made meanwhile by
someone else is read again and kept, never overwritten); the parsing and printing
are pure functions, unit-tested alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from schooner.admin.client import AdminClient, AdminError
from schooner.admin.etag import policy_etag
from schooner.exceptions import ServeConfigError

__all__ = ["add_parser", "cmd_traffic", "format_traffic", "new_policy", "parse_pairs"]

#: How far from 1 the weights given to ``--set`` may sum.
_TOLERANCE = 1e-6
#: How many times a change is read and made again when the policy changed meanwhile.
_ATTEMPTS = 5


def add_parser(sub: Any, add_address: Any) -> None:
    """Register ``schooner traffic`` (``add_address``: main's ``--address`` option)."""
    p = sub.add_parser(
        "traffic",
        help="Show or change how an application's requests are split and shadowed.",
        description="Show APP's traffic split, its shadows and the request rate, error "
        "rate and p99 latency of each application involved (last ~10 s); with --set, "
        "--shadow or --clear, change them (no replica restarts).",
    )
    p.add_argument("app", metavar="APP", help="the application whose requests are split")
    p.add_argument(
        "--set",
        nargs="+",
        metavar="APP=WEIGHT",
        default=None,
        help="replace the split: weights per application, summing to 1 "
        "(e.g. --set app=0.9 app_canary=0.1; APP itself may be one of them)",
    )
    p.add_argument(
        "--shadow",
        action="append",
        metavar="APP=FRACTION",
        default=None,
        help="copy FRACTION (0 to 1) of the requests to APP, answers discarded; "
        "repeatable; APP=0 stops the copies",
    )
    p.add_argument(
        "--clear",
        action="store_true",
        help="remove the split and every shadow (with --set/--shadow: start from nothing)",
    )
    add_address(p)
    p.set_defaults(handler="schooner.cli.traffic_cmd:cmd_traffic")


def parse_pairs(option: str, items: Sequence[str], *, fraction: bool) -> dict[str, float]:
    """``["app=0.9", ...]`` of ``option`` as ``{app: number}``; ServeConfigError naming the
    argument and what is wrong."""
    what = "fraction" if fraction else "weight"
    result: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ServeConfigError(
                f"{option} {item!r}: expected APP={what.upper()} (e.g. app_canary=0.1)."
            )
        try:
            number = float(text)
        except ValueError:
            raise ServeConfigError(
                f"{option} {item!r}: the {what} {text!r} is not a number."
            ) from None
        if not math.isfinite(number) or number < 0:
            raise ServeConfigError(f"{option} {item!r}: the {what} must be >= 0, got {text}.")
        if fraction and number > 1:
            raise ServeConfigError(
                f"{option} {item!r}: the fraction must be between 0 and 1, got {text}."
            )
        if name in result:
            raise ServeConfigError(
                f"{option} {item!r}: application '{name}' is given twice; give each once."
            )
        result[name] = number
    return result


def new_policy(
    current: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, float]] | None:
    """The (split, shadows) the options ask for, from ``current``; None if they change
    nothing (no --set, --shadow or --clear)."""
    if args.set is None and args.shadow is None and not args.clear:
        return None
    split = {} if args.clear else dict(current.get("split") or {})
    shadows = {} if args.clear else dict(current.get("shadows") or {})
    if args.set is not None:
        split = parse_pairs("--set", args.set, fraction=False)
        total = sum(split.values())
        if abs(total - 1.0) > _TOLERANCE:
            raise ServeConfigError(
                f"--set {' '.join(args.set)}: the weights sum to {total:g}; they must sum to 1."
            )
    if args.shadow is not None:
        for name, value in parse_pairs("--shadow", args.shadow, fraction=True).items():
            if value == 0:
                shadows.pop(name, None)
            else:
                shadows[name] = value
    return split, shadows


def _rate_row(name: str, rates: dict[str, Any]) -> list[str]:
    p99 = rates.get("p99_ms")
    return [
        name,
        f"{float(rates.get('request_rate') or 0):.2f}",
        f"{100 * float(rates.get('error_rate') or 0):.2f}%",
        "-" if p99 is None else f"{float(p99):.1f}",
    ]


def format_traffic(app: str, policy: dict[str, Any]) -> str:
    """What ``schooner traffic APP`` prints for ``policy`` (the endpoint's answer)."""
    split: dict[str, float] = policy.get("split") or {}
    shadows: dict[str, float] = policy.get("shadows") or {}
    lines = [f"Application: {app}"]
    if split:
        lines.append("Split:")
        width = max(len(name) for name in split)
        lines += [f"  {name:<{width}}  {weight:g}" for name, weight in split.items()]
    else:
        lines.append(f"Split: none (all requests go to {app})")
    if shadows:
        lines.append("Shadows:")
        width = max(len(name) for name in shadows)
        lines += [f"  {name:<{width}}  {fraction:g}" for name, fraction in shadows.items()]
    else:
        lines.append("Shadows: none")
    rates: dict[str, Any] = policy.get("rates") or {}
    if rates:
        seconds = max((float(r.get("seconds") or 0) for r in rates.values()), default=0.0)
        span = f"last {seconds:.0f} s" if seconds else "no readings yet"
        lines.append(f"Rates ({span}):")
        rows = [["APPLICATION", "REQ/S", "ERRORS", "P99 MS"]]
        rows += [_rate_row(name, r) for name, r in rates.items()]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def cmd_traffic(args: argparse.Namespace) -> int:
    client = AdminClient(args.address)
    current = client.get_traffic(args.app)
    for attempt in range(1, _ATTEMPTS + 1):
        change = new_policy(current, args)
        if change is None:
            break
        split, shadows = change
        try:
            client.put_traffic(args.app, split, shadows, if_match=policy_etag(current))
        except AdminError as exc:
            if exc.status != 412 or attempt == _ATTEMPTS:
                raise
            current = client.get_traffic(args.app)  # changed meanwhile: redo on what it is now
            continue
        current = client.get_traffic(args.app)
        break
    sys.stdout.write(format_traffic(args.app, current))
    return 0
