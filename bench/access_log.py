"""What an access line costs: ``AccessLog.record`` on the request path (enabled and
disabled), and the background flush that writes the queued lines, per line. TEXT
lines (the default) are formatted by ``record`` itself, JSON ones by the flush. Best
of ``--rounds`` timeit runs. Run with ``python -m bench.access_log``.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from pathlib import Path

from schooner.logs.access import AccessBuffer, AccessLog
from schooner.logs.output import LogContext, LogFile
from schooner.logs.settings import LogSettings, Rotation

CONTEXT = LogContext("proxy", component_id="1234")


def _record(log: AccessLog) -> None:
    log.record(
        method="GET",
        route="/app",
        status=200,
        latency_ms=1.234,
        request_id="9f487e57-5899-47e9-a33f-000000000001",
        application="app",
        deployment="Model",
        client="127.0.0.1:50000",
    )


def _best_ns(stmt: object, number: int, rounds: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=rounds)) / number * 1e9  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.access_log")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        logfile = LogFile(Path(tmp) / "proxy.log", Rotation())
        buffer = AccessBuffer()
        buffer.configure(logfile, CONTEXT, LogSettings())
        buffer.stop()  # no background thread: the flush is timed on its own below
        on, off = AccessLog("proxy", buffer=buffer), AccessLog("proxy", False, buffer=buffer)
        results = {
            "record(), access log off": _best_ns(lambda: _record(off), args.calls, args.rounds)
        }

        def record_batch() -> None:
            buffer.pending.clear()
            buffer.lines.clear()
            for _ in range(args.calls):
                _record(on)

        for encoding in ("TEXT", "JSON"):
            buffer.configure(logfile, CONTEXT, LogSettings(encoding=encoding))
            buffer.stop()
            record_ns = _best_ns(record_batch, 1, args.rounds) / args.calls
            results[f"record(), access log on ({encoding})"] = record_ns

            def flush_batch() -> None:
                record_batch()
                buffer.flush()

            both = _best_ns(flush_batch, 1, args.rounds) / args.calls
            results[f"flush, per line ({encoding}, write)"] = both - record_ns
        logfile.close()
    for name, ns in results.items():
        print(f"{name:<42} {ns / 1000:8.2f} µs")


if __name__ == "__main__":
    main()
