"""Health checks through the whole system: `check_health()` in a real replica process."""

from __future__ import annotations

import os
import time

from helpers import wait_for
from starlette.requests import Request

import schooner as serve
from conftest import Instance


@serve.deployment(health_check_period_s=0.1, health_check_timeout_s=5)
class Fragile:
    def __init__(self) -> None:
        time.sleep(1.0)  # a replacement takes a moment, so the UNHEALTHY state is visible
        self.broken = False

    def check_health(self) -> None:
        if self.broken:
            raise RuntimeError("the model's GPU is gone")

    async def __call__(self, request: Request) -> int:
        if request.url.path.endswith("/break"):
            self.broken = True
        return os.getpid()


def test_failing_health_checks_replace_the_replica(clean: Instance) -> None:
    serve.run(Fragile.bind(), name="fragile", route_prefix="/fragile")
    first = clean.http.get("/fragile").json()
    assert clean.http.get("/fragile/break").json() == first

    def unhealthy() -> tuple[str, str] | None:
        app = serve.status().applications["fragile"]
        dep = app.deployments["Fragile"]
        return (app.status.value, dep.message) if dep.status.value == "UNHEALTHY" else None

    app_status, message = wait_for(unhealthy, 30, message="the deployment to be UNHEALTHY")
    assert app_status == "UNHEALTHY"
    assert "failed 3 health checks in a row" in message
    assert "RuntimeError: the model's GPU is gone" in message

    def healthy_again() -> bool:
        app = serve.status().applications["fragile"]
        return app.status.value == "RUNNING" and (
            app.deployments["Fragile"].status.value == "HEALTHY"
        )

    wait_for(healthy_again, 60, message="a healthy replacement")
    assert clean.http.get("/fragile").json() != first
