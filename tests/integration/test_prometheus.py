"""Prometheus metrics end to end: a real Prometheus (Debian's package) scrapes a running
instance through the service-discovery file the head writes, and answers the queries
of Ray's Serve Grafana dashboards (HTTP, deployment and replica panels) with data for
an application under traffic; custom metrics from a replica arrive with their tags.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, wait_for
from ray_cluster import ray_connect, ray_disconnect_and_check

import schooner as serve
from schooner import _core, metrics

PROMETHEUS = shutil.which("prometheus")
APP = "metrics_app"
ROUTE = "/shop"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Debian's prometheus is not installed (apt-get install prometheus; .ci/run does)",
)


@serve.deployment
class Pricer:
    def __init__(self) -> None:
        self.lookups = metrics.Counter(
            "price_lookups", description="Prices looked up.", tag_keys=("currency",)
        )

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        return f"model-{model_id}"

    async def __call__(self, item: str) -> int:
        self.lookups.inc(tags={"currency": "EUR"})
        await self.get_model("m1")
        if item == "broken":
            raise ValueError("no price for a broken item")
        return len(item)


@serve.deployment
class Shop:
    def __init__(self, pricer: Any) -> None:
        self.pricer = pricer

    async def __call__(self, request: Any) -> dict[str, int]:
        item = request.query_params["item"]
        return {"price": await self.pricer.remote(item)}


class Traffic:
    """Requests from a thread until stopped: mostly good ones, every fifth one fails."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                item = "broken" if n % 5 == 0 else "apple"
                status = client.get(self.url, params={"item": item}).status_code
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self._stop.wait(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class Prometheus:
    """Debian's prometheus, scraping every second the targets in ``sd_file``."""

    def __init__(self, tmp: Path, sd_file: Path) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: schooner\n"
            "    file_sd_configs:\n"
            f"      - files: ['{sd_file}']\n"
            "        refresh_interval: 1s\n"
        )
        self.log = tmp / "prometheus.log"
        assert PROMETHEUS is not None
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.log.read_text()}")
            try:
                return self.http.get("/-/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s=30, message="prometheus to be ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def targets_up(self) -> list[str]:
        active = self.http.get("/api/v1/targets").json()["data"]["activeTargets"]
        return [t["scrapeUrl"] for t in active if t["health"] == "up"]

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# Ray's dashboard queries, with its variables set to "everything" (as Grafana does for
# "All") and its global filter on the cluster label.
ALL = 'application=~".*",application!~"",ray_io_cluster=~".*"'
HTTP_ALL = f'{ALL},route=~".*",route!~"/-/.*"'


@pytest.fixture
def metered(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """An instance of its own with ``metrics_port``, reporting every half second."""
    monkeypatch.setenv("SCHOONER_METRICS_REPORT_INTERVAL_S", "0.5")
    if _core.get_core_or_none() is not None:
        serve.shutdown()
    http_port = free_port()
    if backend == "ray":
        ray_connect(request.getfixturevalue("ray_cluster"))
        serve.start(
            http_options={"host": "127.0.0.1", "port": http_port},
            proxy_location="HeadOnly",
            metrics_port=0,
        )
    else:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, metrics_port=0)
    try:
        info = _core.get_core().call_controller_sync("instance_info")
        yield {**info, "url": f"http://127.0.0.1:{http_port}"}
    finally:
        if backend == "ray":
            ray_disconnect_and_check()
        else:
            serve.shutdown()


DASHBOARD = Path(__file__).parents[2] / "dashboards" / "schooner_grafana_dashboard.json"


def _shipped_dashboard_queries() -> list[tuple[str, list[str]]]:
    """(title, queries) of each panel, with the variables as Grafana sets them for "All"."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    found = []
    for panel in panels:
        exprs = [
            target["expr"]
            .replace("$Application", ".*")
            .replace("$Deployment", ".*")
            .replace("$__rate_interval", "1m")
            for target in panel.get("targets", [])
        ]
        if exprs:
            found.append((panel["title"], exprs))
    return found


def _values(result: list[dict[str, Any]], **labels: str) -> list[float]:
    return [float(r["value"][1]) for r in result if labels.items() <= dict(r["metric"]).items()]


@pytest.mark.both_backends
def test_prometheus_answers_rays_serve_dashboard_queries(
    metered: dict[str, Any], tmp_path: Path
) -> None:
    serve.run(Shop.bind(Pricer.bind()), name=APP, route_prefix=ROUTE)
    sd_file = Path(metered["session"]) / "prom_metrics_service_discovery.json"
    metrics_target = metered["metrics_url"].removeprefix("http://").removesuffix("/metrics")
    (entry,) = json.loads(sd_file.read_text())
    assert entry["targets"] == [metrics_target]  # one target: every series once

    prometheus = Prometheus(tmp_path, sd_file)
    try:
        with Traffic(metered["url"] + ROUTE) as traffic:
            wait_for(
                lambda: any(metrics_target in url for url in prometheus.targets_up()),
                timeout_s=30,
                message="prometheus to scrape the instance",
            )

            def answered(expr: str, **labels: str) -> list[float]:
                found: list[float] = []

                def positive() -> bool:
                    found[:] = _values(prometheus.query(expr), **labels)
                    return bool(found) and all(v > 0 for v in found)

                wait_for(positive, timeout_s=60, message=f"data for {expr}")
                return found

            # HTTP panels: QPS, errors by code, latency quantiles.
            answered(
                f"sum(rate(ray_serve_num_http_requests_total{{{HTTP_ALL}}}[5m]))"
                " by (application, route)",
                application=APP,
                route=ROUTE,
            )
            answered(
                f"sum(rate(ray_serve_num_http_error_requests_total{{{HTTP_ALL}}}[5m]))"
                " by (application, route, error_code)",
                application=APP,
                error_code="500",
            )
            (p90,) = answered(
                "histogram_quantile(0.9, sum(rate(ray_serve_http_request_latency_ms_bucket"
                f"{{{HTTP_ALL}}}[5m])) by (application, route, le))",
                application=APP,
            )
            assert p90 < 10_000
            # Deployment panels: replicas, QPS, errors, processing latency, queue.
            for deployment in ("Shop", "Pricer"):
                assert answered(
                    f"sum(ray_serve_deployment_replica_healthy{{{ALL}}})"
                    " by (application, deployment)",
                    application=APP,
                    deployment=deployment,
                ) == [1.0]
                answered(
                    f"sum(rate(ray_serve_deployment_request_counter_total{{{ALL}}}[5m]))"
                    " by (application, deployment)",
                    application=APP,
                    deployment=deployment,
                )
                answered(
                    f"sum(rate(ray_serve_deployment_error_counter_total{{{ALL}}}[5m]))"
                    " by (application, deployment)",
                    application=APP,
                    deployment=deployment,
                )
                answered(
                    "histogram_quantile(0.5, sum(rate("
                    f"ray_serve_deployment_processing_latency_ms_bucket{{{ALL}}}[5m]))"
                    " by (application, deployment, le))",
                    application=APP,
                    deployment=deployment,
                )
            queued = prometheus.query(
                f"sum(ray_serve_deployment_queued_queries{{{ALL}}}) by (application, deployment)"
            )
            assert _values(queued, application=APP, deployment="Pricer")  # the handle's queue
            # Replica panels (Ray's Serve Deployment dashboard).
            processing = prometheus.query(
                f"sum(ray_serve_replica_processing_queries{{{ALL}}}) by (application, deployment)"
            )
            assert _values(processing, application=APP, deployment="Shop")
            answered(
                f"sum(ray_serve_num_multiplexed_models{{{ALL}}}) by (application, deployment)",
                deployment="Pricer",
            )
            answered(f"ray_serve_registered_multiplexed_model_id{{{ALL}}}", model_id="m1")
            answered(
                f"sum(ray_serve_multiplexed_models_load_counter_total{{{ALL}}})"
                " by (application, deployment)",
                deployment="Pricer",
            )
            answered("sum(ray_serve_deployment_replica_starts_total) by (deployment)")
            answered("ray_serve_controller_num_control_loops")
            assert prometheus.query("ray_serve_num_ongoing_http_requests")
            answered(
                "sum(ray_serve_handle_request_counter_total) by (deployment)", deployment="Pricer"
            )
            # Every panel of the Grafana dashboard we ship is valid and has data.
            for title, exprs in _shipped_dashboard_queries():

                def has_data(exprs: list[str] = exprs) -> bool:
                    return any(prometheus.query(expr) for expr in exprs)

                wait_for(has_data, timeout_s=60, message=f"data for the panel {title!r}")
            # The custom metric, with its tag and the replica's.
            answered(
                'ray_price_lookups_total{currency="EUR"}',
                application=APP,
                deployment="Pricer",
            )
        assert traffic.statuses.get(200, 0) > 0
        assert set(traffic.statuses) <= {200, 500}, traffic.statuses
    finally:
        prometheus.close()


def test_metrics_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SCHOONER_METRICS=0`` (the benchmark's A/B switch): every process records nothing,
    and /metrics answers with no series."""
    monkeypatch.setenv("SCHOONER_METRICS", "0")
    monkeypatch.setenv("SCHOONER_METRICS_REPORT_INTERVAL_S", "0.2")
    if _core.get_core_or_none() is not None:
        serve.shutdown()
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port}, metrics_port=0)
    try:
        serve.run(Shop.bind(Pricer.bind()), name=APP, route_prefix=ROUTE)
        for _ in range(5):
            response = httpx.get(f"http://127.0.0.1:{http_port}{ROUTE}", params={"item": "pear"})
            assert response.json() == {"price": 4}
        info = _core.get_core().call_controller_sync("instance_info")
        time.sleep(1.0)  # five report intervals: a process that reported would have by now
        text = httpx.get(info["metrics_url"]).text
        assert "ray_" not in text, text[:2000]
    finally:
        serve.shutdown()
