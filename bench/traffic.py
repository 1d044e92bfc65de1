"""Traffic management's cost on the data path: hello world over HTTP at 32 connections,
the same instance and load generator throughout, with

(a) plain routing; (b) a 0.5/0.5 split between two identical apps; (c) no split but
every request carrying ``X-SERVE-SHARD-KEY`` (keys drawn from a pool of 1000);
(d) the split with shard keys; (e) a shadow at fraction 1.0 to an identical app
(each request then costs two replica calls: the primary's throughput is reported
with the number of copies the shadow received).

All variants use the same wrk script (a request drawn from a pre-made pool; the
plain pool has one request), so the generator's own cost is the same. The variants
run in ABBA order (a..e, e..a) and each one's mean is compared with plain's.
Target: (b), (c), (d) within 5% of (a).

Reading the ratios: each app has one replica, so (b) and (d) spread the work over two
replica processes where (a) and (c) have one, and hello world at one replica is partly
replica-bound: (b) and (d) come out *faster* than plain. The like-for-like overhead
comparisons are (c) vs (a) (same replica, shard key added) and (d) vs (b) (same two
replicas, shard key added). On a shared 2-core machine run-to-run noise is ~10%.

The direct measure of what the choice costs is the proxy's own CPU time per request
(from ``/proc/<pid>/stat``, which does not depend on how many replicas answer):
recorded per variant as ``proxy us/request``, and its difference from plain.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from bench.context import Context, log
from bench.detached import Detached, running_instance
from bench.load import LoadResult, get_request, run_pool
from bench.systems import SCHOONER

CONNECTIONS = 32
SHARD_KEYS = 1000
SCENARIO = "traffic"

APP = textwrap.dedent(
    """
    import schooner as serve

    @serve.deployment
    class Hello:
        def __init__(self):
            self.calls = 0

        def __call__(self, request):
            self.calls += 1
            return "hello"

        def count(self):
            return self.calls

    app = Hello.bind()
    """
)

CONTROL = textwrap.dedent(
    """
    import sys
    import schooner as serve

    what = sys.argv[1]
    if what == "count":
        print(serve.get_app_handle("shadow").count.remote().result())
        sys.exit(0)
    split = {"main": 0.5, "twin": 0.5} if what == "split" else None
    serve.set_traffic("main", split)
    serve.shadow_traffic("main", "shadow", 1.0 if what == "shadow" else 0.0)
    """
)

#: (label, policy, with shard keys)
VARIANTS = [
    ("plain", "plain", False),
    ("split 0.5/0.5", "split", False),
    ("shard key", "plain", True),
    ("split + shard key", "split", True),
    ("shadow 1.0", "shadow", False),
]


def _control(inst: Detached, what: str) -> str:
    done = subprocess.run(
        [sys.executable, "control.py", what],
        cwd=inst.dir,
        env=inst.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"control {what} failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


def _wait_policy(port: int, with_policy: bool) -> None:
    """Until the proxy answers with (or without) the ``x-serve-application`` header."""
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            if (r.headers.get("x-serve-application") is not None) == with_policy:
                return
        time.sleep(0.02)
    raise RuntimeError("the proxy did not pick up the traffic policy")


def _proxy_pids(inst: Detached) -> list[int]:
    with urllib.request.urlopen(inst.admin + "/api/serve/applications/", timeout=10) as r:
        proxies = json.load(r).get("proxies") or {}
    return [int(p["worker_id"]) for p in proxies.values() if str(p.get("worker_id", "")).isdigit()]


def _cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def _config() -> dict[str, object]:
    apps = [("main", "/"), ("twin", None), ("shadow", None)]
    return {
        "applications": [
            {"name": name, "route_prefix": prefix, "import_path": "tapp:app"}
            for name, prefix in apps
        ]
    }


def traffic(ctx: Context) -> None:
    """Routing overhead of splits, shard keys and shadows vs plain routing (hello @32c)."""
    if SCHOONER not in ctx.available(SCHOONER):
        return
    files = {"tapp.py": APP, "control.py": CONTROL}
    try:
        with running_instance("bench-traffic-", files) as inst:
            inst.deploy(_config())
            inst.wait_running("main", "twin", "shadow")
            _measure(ctx, inst)
    except Exception as exc:
        ctx.fail(SCENARIO, SCHOONER, exc)


def _measure(ctx: Context, inst: Detached) -> None:
    opts = ctx.options
    port = inst.http_port
    rng = random.Random(14)
    plain_pool = [get_request(port)]
    keyed_pool = [
        get_request(port, headers={"X-SERVE-SHARD-KEY": f"user-{rng.getrandbits(48):x}"})
        for _ in range(SHARD_KEYS)
    ]
    results: dict[str, list[LoadResult]] = {label: [] for label, _, _ in VARIANTS}
    proxy_us: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
    proxies = _proxy_pids(inst)
    copies: list[tuple[int, int]] = []  # (requests answered, copies the shadow received)
    current = ""
    for label, policy, keyed in [*VARIANTS, *reversed(VARIANTS)]:
        if policy != current:
            _control(inst, policy)
            _wait_policy(port, policy != "plain")
            current = policy
        pool = keyed_pool if keyed else plain_pool
        ctx.quiet(f"{SCENARIO} {label}")
        run_pool(port, CONNECTIONS, opts.warmup_s, pool, opts.loadgen)
        before = int(_control(inst, "count")) if policy == "shadow" else 0
        cpu_before = _cpu_s(proxies)
        result = run_pool(port, CONNECTIONS, opts.duration_s, pool, opts.loadgen)
        if result.requests:
            proxy_us[label].append((_cpu_s(proxies) - cpu_before) / result.requests * 1e6)
        if policy == "shadow":
            copies.append((result.requests, int(_control(inst, "count")) - before))
        results[label].append(result)
        log(
            f"[{SCENARIO}] {label}: {result.requests_per_s:,.0f} req/s, "
            f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms, errors {result.errors}"
        )
    _control(inst, "plain")
    plain = statistics.mean(r.requests_per_s for r in results["plain"])
    plain_us = statistics.mean(proxy_us["plain"]) if proxy_us["plain"] else 0.0
    for label, _, _ in VARIANTS:
        runs = results[label]
        rps = statistics.mean(r.requests_per_s for r in runs)
        detail = {"runs": [r.as_dict() for r in runs]}
        ctx.record(SCENARIO, f"req/s {label} @32c", SCHOONER, rps, "req/s", True, detail)
        p50 = statistics.mean(r.p50_ms for r in runs)
        ctx.record(SCENARIO, f"p50 ms {label} @32c", SCHOONER, p50, "ms", False)
        ctx.record(SCENARIO, f"{label} / plain", SCHOONER, rps / plain, "x", True)
        if proxy_us[label]:
            us = statistics.mean(proxy_us[label])
            ctx.record(SCENARIO, f"proxy us/request {label}", SCHOONER, us, "us", False)
            if label != "plain":
                extra = us - plain_us
                ctx.record(
                    SCENARIO, f"proxy us/request {label} - plain", SCHOONER, extra, "us", False
                )
            log(f"[{SCENARIO}] {label}: proxy CPU {us:.1f} us/request (plain {plain_us:.1f})")
        errors = sum(r.errors for r in runs)
        if errors:
            ctx.warn(f"{SCENARIO} {label}: {errors} failed requests")
        log(f"[{SCENARIO}] {label}: mean {rps:,.0f} req/s = {rps / plain:.3f} x plain")
    answered = sum(a for a, _ in copies)
    received = sum(c for _, c in copies)
    ctx.record(SCENARIO, "shadow copies received / requests", SCHOONER, received / answered, "")
    log(f"[{SCENARIO}] shadow 1.0: the shadow received {received:,} copies of {answered:,}")
