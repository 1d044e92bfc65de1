"""Rollouts that check themselves, on a real instance: real HTTP traffic, the metrics the
processes report, the admin API and the `schooner rollout` command.

The instance reports metrics every 0.3 s (SCHOONER_METRICS_REPORT_INTERVAL_S in its
environment) so that steps of 1-2 s have data to judge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from detached import Detached
from helpers import wait_for

VERSIONS = """
from starlette.responses import PlainTextResponse

import schooner as serve


@serve.deployment
class Version:
    def __init__(self, name: str, status: int = 200) -> None:
        self.name, self.status = name, status

    async def __call__(self, request):
        return PlainTextResponse(self.name, status_code=self.status)


@serve.deployment
class Raising:
    async def __call__(self, request):
        raise RuntimeError("this version is broken")


v1 = Version.bind("v1")
v2 = Version.bind("v2")
bad = Version.bind("bad", 500)
raises = Raising.bind()
"""

APPS = [
    ("app", "/", "v1"),
    ("good", None, "v2"),
    ("bad", None, "bad"),
    ("raises", None, "raises"),
    ("app2", "/two", "v1"),
    ("good2", None, "v2"),
]


class Traffic:
    """GET requests to one path from a background thread, one at a time, as fast as they
    are answered; keeps (status, body) of each, and the application its
    ``x-serve-application`` header named (None: no split was applied to it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.records: list[tuple[int, str, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    served_by = response.headers.get("x-serve-application")
                    self.records.append((response.status_code, response.text, served_by))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    @property
    def answers(self) -> list[tuple[int, str]]:
        return [(status, body) for status, body, _ in self.records]

    def mark(self) -> int:
        return len(self.records)

    def since(self, mark: int) -> list[tuple[int, str]]:
        return self.answers[mark:]

    def unsplit_from(self, mark: int) -> int | None:
        """The index of the first answer after ``mark`` that no split routed (the proxy
        had dropped the policy by then: every later request was sent after it)."""
        return next((i for i, r in enumerate(self.records) if i >= mark and r[2] is None), None)

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_for(lambda: len(self.answers) > 5, message="traffic to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    workdir = tmp_path_factory.mktemp("rollout")
    (workdir / "versions.py").write_text(textwrap.dedent(VERSIONS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCHOONER_METRICS_REPORT_INTERVAL_S", "0.3")
        instance = Detached(workdir)
        try:
            instance.start()
            instance.deploy(
                {
                    "applications": [
                        {"name": name, "route_prefix": prefix, "import_path": f"versions:{attr}"}
                        for name, prefix, attr in APPS
                    ]
                }
            )
            instance.wait_running(*(name for name, _, _ in APPS))
            yield instance
        finally:
            instance.stop()


def rollout_cli(inst: Detached, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schooner.cli.main", "rollout", *args],
        cwd=inst.dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SCHOONER_ADDRESS": inst.admin},
    )


def rollout_status(inst: Detached, app: str) -> dict[str, Any]:
    response = inst.api.get(f"/api/schooner/rollouts/{app}")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


def assert_all_back_on_v1(inst: Detached, traffic: Traffic) -> None:
    """Once the proxy has the rollback (a request it sent without a split: the status
    says ROLLED_BACK as soon as the controller decides, and the proxy hears of it a
    moment later), every request is answered 200 by the old version."""
    mark = traffic.mark()
    wait_for(
        lambda: traffic.unsplit_from(mark) is not None,
        message="a request the proxy sent without the split",
    )
    back = traffic.unsplit_from(mark)
    assert back is not None
    wait_for(lambda: len(traffic.since(back)) >= 100, message="100 requests after the rollback")
    assert Counter(traffic.since(back)) == Counter({(200, "v1"): len(traffic.since(back))})
    assert traffic.errors == []


def test_a_version_answering_500s_rolls_back_by_itself(inst: Detached) -> None:
    with Traffic(f"{inst.http.base_url}/") as traffic:
        proc = rollout_cli(
            inst,
            "app",
            "--to", "bad",
            "--steps", "20,50,100",
            "--interval", "2s",
            "--max-error-rate", "0.05",
            "--min-requests", "5",
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        out = proc.stdout
        assert "Rollout of 'app' from 'app' to 'bad' started" in out
        assert "rolled_back" in out  # the step check's line
        assert "ROLLED_BACK: rolled back at 20%" in out and "error rate 1.00 > max 0.05" in out
        assert (500, "bad") in traffic.answers  # it did get traffic before the rollback
        assert_all_back_on_v1(inst, traffic)
    status = rollout_status(inst, "app")
    assert status["state"] == "ROLLED_BACK" and status["weight_percent"] == 0
    assert status["history"][-1]["new_error_rate"] == 1.0
    assert status["history"][-1]["old_error_rate"] == 0.0
    shown = yaml.safe_load(inst.cli("status").stdout)["applications"]
    assert shown["app"]["rollout"].startswith("to bad (ROLLED_BACK, 0% of requests): rolled back")
    assert "rollout" not in shown["bad"]


def test_a_version_whose_code_raises_rolls_back_through_the_admin_api(inst: Detached) -> None:
    with Traffic(f"{inst.http.base_url}/") as traffic:
        body = {"to": "raises", "steps": [25, 100], "interval_s": 2, "max_error_rate": 0.01}
        response = inst.api.post("/api/schooner/rollouts/app", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "RUNNING" and response.json()["weight_percent"] == 25
        status = wait_for(
            lambda: (s := rollout_status(inst, "app"))["state"] != "RUNNING" and s,
            timeout_s=30,
            message="the rollout to end",
        )
        assert status["state"] == "ROLLED_BACK", status["message"]
        assert status["message"].startswith("rolled back at 25%"), status["message"]
        assert_all_back_on_v1(inst, traffic)
    # A second start while none runs is fine; bad input is a 400 with the reason.
    response = inst.api.post("/api/schooner/rollouts/app", json={"to": "nope"})
    assert response.status_code == 400
    assert "there is no application 'nope'" in response.json()["error"]


def test_a_healthy_version_reaches_100_percent_and_retires_the_old_one(inst: Detached) -> None:
    with Traffic(f"{inst.http.base_url}/") as traffic:
        proc = rollout_cli(
            inst,
            "app",
            "--to", "good",
            "--steps", "50,100",
            "--interval", "1500ms",
            "--max-error-rate", "0.01",
            "--max-p99-ms", "2000",
            "--min-requests", "5",
            "--retire",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
        assert len(lines) == 2 and all("passed" in line for line in lines), proc.stdout
        assert "SUCCEEDED: succeeded: 'good' answers 100%" in proc.stdout
        assert "'app' was retired" in proc.stdout
        # The old app's replicas stop; its route keeps answering, from the new version.
        wait_for(
            lambda: not inst.app("app")["deployments"]["Version"]["replicas"],  # type: ignore[index]
            timeout_s=30,
            message="the retired app's replicas to stop",
        )
        mark = traffic.mark()
        wait_for(lambda: len(traffic.since(mark)) >= 50, message="50 requests after retiring")
        assert set(traffic.since(mark)) == {(200, "v2")}
        assert traffic.errors == []
    app = inst.app("app")
    assert app is not None and app["status"] == "RUNNING"
    assert "Retired by the rollout of 'app' to 'good'" in app["message"]
    status = inst.cli("status").stdout
    assert "Retired by the rollout" in status


@pytest.mark.slow
def test_a_rollout_survives_a_head_restart(inst: Detached) -> None:
    with Traffic(f"{inst.http.base_url}/two") as traffic:
        body = {"to": "good2", "steps": [50, 100], "interval_s": 4, "min_requests": 5}
        response = inst.api.post("/api/schooner/rollouts/app2", json=body)
        assert response.status_code == 200, response.text
        old = inst.api.get("/api/schooner/instance").json()
        os.kill(old["pid"], signal.SIGKILL)
        wait_for(
            lambda: inst.api.get("/api/schooner/instance").json()["pid"] != old["pid"],
            timeout_s=30,
            message="a new head to answer",
        )
        status = rollout_status(inst, "app2")
        assert status["state"] == "RUNNING" and status["weight_percent"] == 50
        assert "after a head restart" in status["message"]
        status = wait_for(
            lambda: (s := rollout_status(inst, "app2"))["state"] != "RUNNING" and s,
            timeout_s=60,
            message="the rollout to end after the restart",
        )
        assert status["state"] == "SUCCEEDED", status["message"]
        assert [c["outcome"] for c in status["history"]] == ["passed", "passed"]
        mark = traffic.mark()
        wait_for(lambda: len(traffic.since(mark)) >= 20, message="requests after the rollout")
        assert set(traffic.since(mark)) == {(200, "v2")}
