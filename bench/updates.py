"""Live updates under load: failed requests while each kind of update happens.

A detached instance (``schooner start``) serves a two-deployment app from a
config file; HTTP load runs at a steady rate while the config is changed in
one way per run, and every non-200 answer or socket error counts as failed.
"""

from __future__ import annotations

import textwrap
import threading
import time
import urllib.request
from typing import Any

from bench.context import Context, log
from bench.detached import Detached, running_instance
from bench.load import LoadResult, run_load
from bench.systems import SCHOONER

CONNECTIONS = 8
LOAD_S = 8.0
UPDATE_AT_S = 1.5

APP = textwrap.dedent(
    """
    import schooner as serve

    @serve.deployment(user_config={"factor": 1})
    class Model:
        def reconfigure(self, config):
            self.factor = config["factor"]

        async def predict(self, x):
            return x * self.factor

    @serve.deployment
    class Ingress:
        def __init__(self, model):
            self.model = model

        async def __call__(self, request):
            return await self.model.predict.remote(VERSION)

    VERSION = 1
    app = Ingress.bind(Model.bind())
    """
)


def _config(**overrides: Any) -> dict[str, Any]:
    model = {"name": "Model", "num_replicas": 2, "user_config": {"factor": 1}}
    ingress = {"name": "Ingress", "num_replicas": 2}
    model.update(overrides.get("Model", {}))
    ingress.update(overrides.get("Ingress", {}))
    return {
        "applications": [
            {
                "name": "m",
                "route_prefix": "/",
                "import_path": "upd:app",
                "deployments": [ingress, model],
            }
        ]
    }


UPDATES: list[tuple[str, dict[str, Any], str | None]] = [
    ("user_config", {"Model": {"user_config": {"factor": 2}}}, None),
    ("num_replicas up", {"Model": {"num_replicas": 4}}, None),
    ("num_replicas down", {"Model": {"num_replicas": 1}}, None),
    ("max_ongoing_requests", {"Ingress": {"max_ongoing_requests": 8}}, None),
    ("ray_actor_options", {"Ingress": {"ray_actor_options": {"num_cpus": 0.5}}}, None),
    ("code", {}, "VERSION = 2"),
]


def _answer(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return r.read().decode()


def live_updates(ctx: Context) -> None:
    """Failed requests during each kind of live update, at a steady HTTP load."""
    if SCHOONER not in ctx.available(SCHOONER):
        return
    with running_instance("bench-updates-", {"upd.py": APP}) as inst:
        for kind, overrides, code in UPDATES:
            try:
                _one(ctx, inst, kind, overrides, code)
            except Exception as exc:
                ctx.fail(f"live update: {kind}", SCHOONER, exc)


def _one(
    ctx: Context, inst: Detached, kind: str, overrides: dict[str, Any], code: str | None
) -> None:
    (inst.dir / "upd.py").write_text(APP)
    inst.deploy(_config())
    inst.wait_running("m")
    result: dict[str, LoadResult] = {}

    def load() -> None:
        result["load"] = run_load(inst.http_port, CONNECTIONS, LOAD_S)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(UPDATE_AT_S)
    if code is not None:
        (inst.dir / "upd.py").write_text(APP.replace("VERSION = 1", code))
    started = time.perf_counter()
    inst.deploy(_config(**overrides))
    if kind in ("user_config", "code"):  # both make the answer 2: wait until it is live
        while _answer(inst.http_port) != "2":
            if time.perf_counter() - started > 60:
                raise RuntimeError(f"the {kind} update did not take effect")
            time.sleep(0.02)
    inst.wait_running("m")
    settle_s = time.perf_counter() - started
    thread.join()
    if settle_s > LOAD_S - UPDATE_AT_S:
        ctx.warn(f"the {kind} update took {settle_s:.1f} s, longer than the load ran")
    r = result["load"]
    detail = {**r.as_dict(), "settle_s": settle_s}
    scenario = "live update"
    ctx.record(scenario, f"failed requests: {kind}", SCHOONER, r.errors, "", False, detail)
    ctx.record(scenario, f"requests: {kind}", SCHOONER, r.requests, "", True)
    log(
        f"[updates] {kind}: {r.errors} failed of {r.requests} requests "
        f"({r.requests_per_s:,.0f} req/s), settled in {settle_s:.1f} s"
    )
