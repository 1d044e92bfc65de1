"""``python -m bench``: run the scenarios, print the table, write the JSON file."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from bench import report
from bench.context import Context, log
from bench.load import wrk_path
from bench.machine import machine_info, ray_info
from bench.options import Options
from bench.scenarios import SCENARIOS
from bench.systems import ALL_SYSTEMS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _max_ongoing(value: str) -> int | None:
    if value == "default":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a positive integer or 'default'") from None
    if number < 1:
        raise argparse.ArgumentTypeError("a positive integer or 'default'")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Schooner benchmarks, side by side with bare uvicorn and Ray Serve.",
    )
    parser.add_argument(
        "--ray-python", metavar="PATH", help="a Python with ray[serve] (adds the Ray columns)"
    )
    parser.add_argument(
        "--ray-nodes",
        type=int,
        choices=(1, 2),
        default=1,
        help="nodes of the Ray cluster of the 'ray' scenario (2: replicas on a worker node)",
    )
    parser.add_argument(
        "--baseline-python",
        metavar="PATH",
        help="the Python of another Schooner install, e.g. a venv of the previous commit "
        "(adds the baseline columns: an A/B in one run)",
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIO[,...]",
        help=f"scenarios to run (default all): {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--systems",
        metavar="SYSTEM[,...]",
        default=",".join(ALL_SYSTEMS),
        help="systems to compare (default schooner,bare,ray,baseline)",
    )
    parser.add_argument(
        "--duration", type=float, metavar="S", help="seconds per measurement (default 10)"
    )
    parser.add_argument("--warmup", type=float, metavar="S", help="warm-up seconds (default 5)")
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="measure each load point N times and keep the fastest (default 1)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        metavar="S",
        help="before each measurement, wait up to S s for other processes to go idle "
        "(default 20; 0 with --quick)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "latest.json",
        metavar="PATH",
        help="where to write results (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs (3 s, 1 s warm-up, one cold start): a smoke test, not a measurement",
    )
    parser.add_argument(
        "--max-ongoing",
        type=_max_ongoing,
        default=100,
        metavar="N|default",
        help="max_ongoing_requests of every bench deployment (default 100; 'default': 5)",
    )
    parser.add_argument(
        "--driver-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the handle-call drivers (default asyncio)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="HTTP load generator (default: wrk when installed)",
    )
    return parser


def _split(value: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return names


def options_from(args: argparse.Namespace) -> Options:
    quick = args.quick
    return Options(
        duration_s=args.duration or (3.0 if quick else 10.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if quick else 5.0),
        cold_runs=1 if quick else 3,
        settle_s=2.0 if quick else 5.0,
        loadgen=args.loadgen,
        ray_python=args.ray_python,
        ray_nodes=args.ray_nodes,
        baseline_python=args.baseline_python,
        systems=_split(args.systems, ALL_SYSTEMS, "system"),
        max_ongoing=args.max_ongoing,
        driver_loop=args.driver_loop,
        repeat=max(1, args.repeat or 1),
        quiet_wait_s=args.quiet_wait if args.quiet_wait is not None else (0 if quick else 20),
    )


def _raise_interrupt(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    scenarios = _split(args.only, list(SCENARIOS), "scenario") if args.only else tuple(SCENARIOS)
    options = options_from(args)
    if args.loadgen == "wrk" and not wrk_path():
        raise SystemExit("--loadgen wrk: wrk is not installed")
    machine = machine_info(REPO)
    if options.ray_python:
        try:
            machine["ray"] = ray_info(options.ray_python)
        except Exception as exc:
            log(f"--ray-python {options.ray_python} cannot run Ray Serve ({exc}): no Ray columns.")
            options = dataclasses.replace(options, ray_python=None)
    else:
        log("No --ray-python given: the Ray columns stay empty.")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    ctx = Context(options, RESULTS / "logs" / stamp)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.perf_counter()
    interrupted = False
    try:
        for name in scenarios:
            log(f"=== {name}: {SCENARIOS[name].__doc__}")
            try:
                SCENARIOS[name](ctx)
            except Exception:
                ctx.warn(f"scenario {name} crashed:\n{traceback.format_exc()}")
            finally:
                ctx.servers.stop_all()
    except KeyboardInterrupt:
        interrupted = True
        log("Interrupted: stopping everything the suite started.")
    finally:
        ctx.servers.stop_all()
    rows = report.build_rows(ctx.records)
    targets = report.check_targets(rows)
    print()
    print("\n".join(report.table_lines(rows)))
    print()
    print("Targets (Schooner; issue 3 on the embedded runtime, 11 on Ray, 13 autoscaling):")
    print("\n".join(report.target_lines(targets)))
    document: dict[str, Any] = {
        "machine": machine,
        "options": asdict(options),
        "scenarios": list(scenarios),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "interrupted": interrupted,
        "rows": [asdict(row) for row in rows],
        "targets": targets,
        "records": [asdict(rec) for rec in ctx.records],
        "warnings": ctx.warnings,
        "table_markdown": report.table_lines(rows, markdown=True),
        "targets_markdown": report.target_lines(targets, markdown=True),
        "logs": str(ctx.servers.log_dir),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nWrote {args.json} (logs in {ctx.servers.log_dir})")
    if interrupted:
        sys.exit(130)
