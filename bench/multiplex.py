"""The ``multiplex`` scenario (issue 14): what model-aware routing saves in model loads.

``bench_apps:multiplex`` runs 3 replicas of ``@serve.multiplexed`` with
``max_num_models_per_replica=2``, a model load costing ``MODEL_LOAD_S``
(50 ms of ``asyncio.sleep``). Once all three replicas answer (``GET /stats``
polled), ``REQUESTS`` requests go over HTTP on ``CONNECTIONS`` keep-alive
connections, each naming one of ``MODELS`` models (``serve_multiplexed_model_id``),
drawn uniformly at random with a fixed seed: the same sequence in every arm.

Two arms, each on an instance of its own: model-aware routing on (the default)
and off (``SCHOONER_MODEL_AWARE_ROUTING=0`` in the instance's environment,
routers then choose by power of two choices alone). Per arm: model loads per
1000 requests (the replicas' own counts, read from ``GET /stats`` after the
load) and throughput.

6 models on 3 replicas of 2 slots fit exactly: the ideal is 6 loads in all
(each model loaded once, on one replica, and never evicted). Routing blind to
models makes each replica see all 6 and evict constantly: about 2 requests in 3
miss its 2-model cache, and a replica loads one model at a time.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from dataclasses import dataclass, field

from bench.context import Context, log
from bench.systems import LABELS, SCHOONER

SCENARIO = "multiplex"
MODELS = tuple(f"model-{i}" for i in range(6))
REPLICAS = 3
REQUESTS = 1000
CONNECTIONS = 8
SEED = 14
REQUEST_TIMEOUT_S = 60.0
#: How long the three replicas may take to all answer ``/stats``.
READY_TIMEOUT_S = 60.0
ARMS: tuple[tuple[str, dict[str, str]], ...] = (
    ("on", {}),
    ("off", {"SCHOONER_MODEL_AWARE_ROUTING": "0"}),
)


@dataclass
class ArmResult:
    loads: int
    requests_per_s: float
    seconds: float
    failed: int
    loads_per_replica: dict[str, int] = field(default_factory=dict)

    @property
    def loads_per_1000(self) -> float:
        return 1000.0 * self.loads / REQUESTS


def multiplex(ctx: Context) -> None:
    """Model loads per 1000 requests and req/s, model-aware routing on vs off."""
    if SCHOONER not in ctx.available(SCHOONER):
        return
    model_ids = random.Random(SEED).choices(MODELS, k=REQUESTS)
    for arm, env in ARMS:
        try:
            with ctx.serving(SCHOONER, "multiplex", extra_env=env) as (server, port):
                _wait_for_replicas(port)
                ctx.quiet(f"{SCENARIO} routing {arm}", server)
                started = time.perf_counter()
                failed = _send(port, model_ids)
                seconds = time.perf_counter() - started
                server.track()
                per_replica = _wait_for_replicas(port)
        except Exception as exc:
            ctx.fail(SCENARIO, SCHOONER, exc)
            continue
        result = ArmResult(
            loads=sum(per_replica.values()),
            requests_per_s=REQUESTS / seconds,
            seconds=seconds,
            failed=failed,
            loads_per_replica=per_replica,
        )
        detail = {
            "loads": result.loads,
            "loads_per_replica": per_replica,
            "seconds": seconds,
            "failed": failed,
            "requests": REQUESTS,
            "connections": CONNECTIONS,
            "models": len(MODELS),
        }
        tag = f"model-aware routing {arm}"
        ctx.record(
            SCENARIO, f"loads /1000 req, {tag}", SCHOONER, result.loads_per_1000, "", False, detail
        )
        ctx.record(SCENARIO, f"req/s, {tag}", SCHOONER, result.requests_per_s, "req/s", True)
        if failed:
            ctx.warn(f"[{SCENARIO}] routing {arm}: {failed} requests failed")
        log(
            f"[{SCENARIO}] {LABELS[SCHOONER]}, {tag}: {result.loads} loads in {REQUESTS} "
            f"requests ({result.loads_per_1000:.1f} per 1000; ideal {len(MODELS)}), "
            f"{result.requests_per_s:,.0f} req/s ({seconds:.2f} s), per replica {per_replica}"
        )


def _get(conn: http.client.HTTPConnection, path: str, model_id: str = "") -> tuple[int, str]:
    headers = {"serve_multiplexed_model_id": model_id} if model_id else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read().decode(errors="replace")


def _wait_for_replicas(port: int) -> dict[str, int]:
    """Poll ``GET /stats`` (plain requests reach replicas at random) until all replicas
    answered; returns each one's model loads so far."""
    seen: dict[str, int] = {}
    deadline = time.perf_counter() + READY_TIMEOUT_S
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        while len(seen) < REPLICAS:
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"only {len(seen)} of {REPLICAS} replicas answered /stats within "
                    f"{READY_TIMEOUT_S:.0f} s: {seen}"
                )
            status, body = _get(conn, "/stats")
            if status == 200:
                replica_id, loads = body.split()
                seen[replica_id] = int(loads)
            else:
                time.sleep(0.05)  # a replica still starting: poll again
    finally:
        conn.close()
    return seen


def _send(port: int, model_ids: list[str]) -> int:
    """Send one request per model id over ``CONNECTIONS`` connections, each taking the
    next id when its previous answer came; returns how many failed."""
    lock = threading.Lock()
    position = iter(range(len(model_ids)))
    failures: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        try:
            while True:
                with lock:
                    index = next(position, None)
                if index is None:
                    return
                model_id = model_ids[index]
                try:
                    status, body = _get(conn, "/", model_id)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if status != 200 or body != model_id:
                    failures.append(f"{status} {body[:200]!r} for {model_id}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * len(model_ids))
    if failures:
        log(f"[{SCENARIO}] first failures: {failures[:3]}")
    return len(failures)
