"""Turn records into the table, the target check and the JSON document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.context import Record
from bench.systems import BARE, BASELINE, LABELS, RAY, SCHOONER

#: The systems Schooner is compared with, in column order; each gets a value column and a
#: ratio column when the run measured it (``baseline``: with ``--baseline-python``).
COMPARED = ((BARE, "bare"), (RAY, "Ray"), (BASELINE, "baseline"))


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    higher_is_better: bool
    values: dict[str, float | None]
    errors: dict[str, str]

    def ratio(self, other: str) -> float | None:
        mine, theirs = self.values.get(SCHOONER), self.values.get(other)
        if mine is None or not theirs:
            return None
        return mine / theirs


def build_rows(records: Sequence[Record]) -> list[Row]:
    """One row per (scenario, metric), in the order first measured; errors fill gaps."""
    rows: dict[tuple[str, str], Row] = {}
    errors: dict[str, dict[str, str]] = {}
    for rec in records:
        if rec.error is not None:
            errors.setdefault(rec.scenario, {})[rec.system] = rec.error
            continue
        row = rows.setdefault(
            (rec.scenario, rec.metric),
            Row(rec.scenario, rec.metric, rec.unit, rec.higher_is_better, {}, {}),
        )
        row.values[rec.system] = rec.value
    for scenario, failed in errors.items():
        matching = [row for row in rows.values() if row.scenario == scenario]
        if not matching:
            rows[(scenario, "")] = Row(scenario, "(failed)", "", True, {}, dict(failed))
        for row in matching:
            row.errors.update(failed)
    return list(rows.values())


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}x"


def _cell(row: Row, system: str) -> str:
    if system in row.errors:
        return "error"
    return _number(row.values.get(system))


def table_lines(rows: Sequence[Row], markdown: bool = False) -> list[str]:
    shown = [
        (system, label)
        for system, label in COMPARED
        if any(system in row.values or system in row.errors for row in rows)
    ]
    columns = ("scenario", "metric", "Schooner")
    for _, label in shown:
        columns += (label, f"S/{label}")
    body = []
    for row in rows:
        cells: tuple[str, ...] = (row.scenario, row.metric, _cell(row, SCHOONER))
        for system, _ in shown:
            cells += (_cell(row, system), _ratio(row.ratio(system)))
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
        return lines + ["| " + " | ".join(cells) + " |" for cells in body]
    widths = [max(len(c[i]) for c in [columns, *body]) for i in range(len(columns))]

    def fmt(cells: Sequence[str]) -> str:
        left = [cells[i].ljust(widths[i]) for i in (0, 1)]
        right = [cells[i].rjust(widths[i]) for i in range(2, len(cells))]
        return "  ".join(left + right)

    return [fmt(columns), "  ".join("-" * w for w in widths)] + [fmt(c) for c in body]


@dataclass
class Target:
    """A target of an issue: Schooner's value, or its ratio to ``versus``, against a bound."""

    label: str
    scenario: str
    metric: str
    bound: float
    at_least: bool
    #: Compare Schooner / this system (``bare``, ``ray``) rather than Schooner's value.
    versus: str | None = None
    issue: int = 3

    def describe(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{sign} {self.bound:g}" + (f" x {LABELS[self.versus]}" if self.versus else "")


TARGETS = (
    Target("hello, 32 connections", "hello", "req/s @32c", 0.25, True, versus=BARE),
    Target("hello, 1 connection, p50 (ms)", "hello", "p50 ms @1c", 0.5, False),
    Target("chain, 32 connections", "chain", "req/s @32c", 0.15, True, versus=BARE),
    Target("handle calls, 100 in flight", "handle", "calls/s @100 in flight", 20_000, True),
    Target("cold start to first 200 OK (s)", "cold start", "s to first 200", 1.0, False),
    Target("idle RSS, instance + 1 replica (MB)", "memory idle", "RSS MB", 200, False),
    Target("4 MiB array through a handle (GB/s)", "array 4 MiB", "GB/s", 1.0, True),
    Target(
        "on Ray: hello, 32 connections",
        "on Ray: hello",
        "req/s @32c",
        10.0,
        True,
        versus=RAY,
        issue=11,
    ),
    Target(
        "on Ray: hello, 1 connection, p50",
        "on Ray: hello",
        "p50 ms @1c",
        0.2,
        False,
        versus=RAY,
        issue=11,
    ),
    Target(
        "autoscale: failed requests, step load",
        "autoscale: step load",
        "failed, all phases",
        0,
        False,
        issue=13,
    ),
    Target(
        "autoscale: from zero - cold replica (s)",
        "autoscale: from zero",
        "s minus cold replica start",
        0.3,
        False,
        issue=13,
    ),
)


def check_targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    by_key = {(row.scenario, row.metric): row for row in rows}
    checked = []
    for target in TARGETS:
        row = by_key.get((target.scenario, target.metric))
        value = None
        if row is not None:
            value = row.ratio(target.versus) if target.versus else row.values.get(SCHOONER)
        met = None
        if value is not None:
            met = value >= target.bound if target.at_least else value <= target.bound
        checked.append({**asdict(target), "target": target.describe(), "value": value, "met": met})
    return checked


def target_lines(checked: Sequence[dict[str, Any]], markdown: bool = False) -> list[str]:
    word = {True: "met", False: "NOT met", None: "not measured"}
    if markdown:
        lines = ["| target | bound | Schooner | status |", "|---|---|---:|---|"]
        for t in checked:
            value = _number(t["value"]) + ("x" if t["versus"] and t["value"] else "")
            lines.append(f"| {t['label']} | {t['target']} | {value} | {word[t['met']]} |")
        return lines
    lines = []
    for t in checked:
        value = _number(t["value"]) + ("x" if t["versus"] and t["value"] else "")
        lines.append(f"  {t['label']:<40} {t['target']:<16} {value:>10}  {word[t['met']]}")
    return lines
