"""Rollouts that check themselves: the RolloutManager with a fake clock and fake metrics."""

from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Any

import pytest
from controller_fakes import app_spec, dep_spec

from schooner.cli.main import main
from schooner.cli.rollout_cmd import parse_duration
from schooner.controller.app_stats import AppSample, sample_app
from schooner.controller.checkpoint import InstanceCheckpoint
from schooner.controller.rollout import (
    RolloutManager,
    RolloutOptions,
    RolloutState,
    RolloutStatus,
)
from schooner.controller.state import ApplicationState, DeploymentState
from schooner.controller.traffic import TrafficManager
from schooner.exceptions import ServeConfigError
from schooner.telemetry import catalog

BOUNDS = catalog.LATENCY_BUCKETS_MS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Metrics:
    """Cumulative per-application counts, read as one proxy's metric report."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ok: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BOUNDS) + 1))

    def serve(self, app: str, ok: int = 0, failed: int = 0, latency_ms: float = 5.0) -> None:
        self.ok[app] += ok
        self.failed[app] += failed
        i = next((i for i, b in enumerate(BOUNDS) if latency_ms <= b), len(BOUNDS))
        self.buckets[app][i] += ok + failed

    def sample(self, app: str) -> AppSample:
        labels, failed = ("GET", "/", app, "200"), ("GET", "/", app, "500")
        families: list[Any] = [
            (
                catalog.HTTP_REQUESTS.name, "counter", "", catalog.HTTP_REQUESTS.labels,
                [(labels, float(self.ok[app])), (failed, float(self.failed[app]))],
            ),
            (
                catalog.HTTP_LATENCY.name, "histogram", "", catalog.HTTP_LATENCY.labels,
                [(labels, (list(self.buckets[app]), 0.0, BOUNDS))],
            ),
        ]  # fmt: skip
        return sample_app([("proxy-1", families)], app, f"Ingress_{app}", self.clock())


def _apps(*names: str) -> dict[str, ApplicationState]:
    apps = {}
    for name in names:
        spec = app_spec(name, "/" if name == "app" else None, dep_spec(f"Ingress_{name}"))
        deps = {d.name: DeploymentState.new(name, d) for d in spec.deployments}
        apps[name] = ApplicationState(spec, deps, 0.0)
    return apps


class World:
    def __init__(self, *names: str, metrics_enabled: bool = True, settle_s: float = 0.0) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)
        self.apps = _apps(*(names or ("app", "v2")))
        self.traffic = TrafficManager()
        self.scaled: list[tuple[str, int]] = []
        self.manager = RolloutManager(
            self.apps,
            self.traffic,
            self.clock,
            sample=self.metrics.sample,
            scale=self._scale,
            metrics_enabled=metrics_enabled,
            settle_s=settle_s,
        )

    def _scale(self, dep: DeploymentState, n: int) -> None:
        self.scaled.append((str(dep.id), n))
        dep.target_num_replicas = n

    def start(self, app: str = "app", to: str = "v2", **options: Any) -> RolloutStatus:
        given = {"interval_s": 10.0, "max_error_rate": 0.01, "max_p99_ms": 250, **options}
        return self.manager.start(app, to, RolloutOptions.parse(given))

    def advance(
        self,
        seconds: float,
        *,
        to_ok: int = 0,
        to_failed: int = 0,
        old_ok: int = 0,
        latency_ms: float = 5.0,
        to: str = "v2",
        old: str = "app",
    ) -> RolloutStatus:
        """Time passes with this traffic, then the controller ticks."""
        self.clock.now += seconds
        self.metrics.serve(to, to_ok, to_failed, latency_ms)
        self.metrics.serve(old, old_ok)
        self.manager.tick()
        status = self.manager.status("app")
        assert status is not None
        return status

    def split(self, owner: str = "app") -> dict[str, float]:
        return dict(self.traffic.describe(owner)["split"])


def test_starting_sets_the_first_step_at_once() -> None:
    w = World()
    status = w.start()
    assert status.state == RolloutState.RUNNING
    assert (status.step, status.weight_percent, status.from_app) == (0, 5.0, "app")
    assert w.split() == pytest.approx({"app": 0.95, "v2": 0.05})


def test_steps_advance_on_healthy_windows_until_succeeded() -> None:
    w = World()
    w.start()
    weights = []
    for _ in range(4):
        status = w.advance(10.0, to_ok=100, old_ok=300)
        weights.append(status.weight_percent)
    assert weights == [25.0, 50.0, 100.0, 100.0]
    assert status.state == RolloutState.SUCCEEDED
    assert w.split() == {"v2": 1.0}  # the owner keeps its route; everything goes to v2
    assert [c.outcome for c in status.history] == ["passed"] * 4
    first = status.history[0]
    assert (first.new_requests, first.old_requests, first.new_error_rate) == (100, 300, 0.0)
    assert first.new_p99_ms is not None and first.new_p99_ms <= 5.0
    assert "succeeded" in status.message and status.ended_at == w.clock.now


def test_a_step_is_not_judged_before_its_interval() -> None:
    w = World()
    w.start()
    status = w.advance(9.0, to_ok=100)
    assert status.weight_percent == 5.0 and status.history == ()


def test_a_step_holds_without_traffic_and_goes_on_once_it_came() -> None:
    w = World()
    w.start(min_requests=50)
    status = w.advance(10.0, to_ok=20)
    assert status.weight_percent == 5.0
    assert status.message.startswith("at 5%: waiting for traffic: 20 of 50 requests")
    assert [c.outcome for c in status.history] == ["waiting"]
    status = w.advance(1.0, to_ok=10)  # checked on every tick: still too few
    assert "30 of 50" in status.message and len(status.history) == 1
    status = w.advance(1.0, to_ok=20)
    assert status.weight_percent == 25.0 and status.history[-1].outcome == "passed"


def test_roll_back_on_error_rate_says_why() -> None:
    w = World()
    w.start(max_error_rate=0.01)
    w.advance(10.0, to_ok=100, old_ok=100)  # -> 25%
    status = w.advance(10.0, to_ok=98, to_failed=2, old_ok=100)  # 2% > 1%, not "a lot"
    assert status.state == RolloutState.ROLLED_BACK
    assert status.message == (
        "rolled back at 25%: error rate 0.02 > max 0.01 over the last 10.0 s "
        "(100 requests; old version 0.00)"
    )
    assert status.weight_percent == 0.0
    assert w.split() == {}  # the owner answers everything again
    assert status.history[-1].outcome == "rolled_back"
    assert status.history[-1].new_error_rate == pytest.approx(0.02)


def test_roll_back_on_p99_says_why() -> None:
    w = World()
    w.start(max_p99_ms=250)
    status = w.advance(10.0, to_ok=100, old_ok=100, latency_ms=400)
    assert status.state == RolloutState.ROLLED_BACK
    assert status.message.startswith("rolled back at 5%: p99 ")
    assert "> max 250 ms over the last 10.0 s (100 requests; old version 5 ms)" in status.message
    assert w.split() == {}


def test_a_bad_version_is_rolled_back_early_within_a_step() -> None:
    w = World()
    w.start(max_error_rate=0.01, min_requests=10)
    status = w.advance(1.0, to_ok=5, to_failed=4)  # fewer than min_requests: no verdict
    assert status.state == RolloutState.RUNNING
    status = w.advance(1.0, to_ok=0, to_failed=6)  # 10 of 15 failed, 2 s into the step
    assert status.state == RolloutState.ROLLED_BACK
    early = "rolled back at 5% (2.0 s into the 10 s step): error rate 0.67"
    assert status.message.startswith(early)
    assert w.split() == {}


def test_a_slight_excess_waits_for_the_interval_end() -> None:
    w = World()
    w.start(max_error_rate=0.01)
    status = w.advance(5.0, to_ok=97, to_failed=3)  # 3%: not over max(2%, 6%)
    assert status.state == RolloutState.RUNNING
    status = w.advance(5.0, to_ok=100)
    assert status.state == RolloutState.ROLLED_BACK  # 1.5% over the whole interval


def test_pause_freezes_resume_restarts_the_interval_and_abort_puts_traffic_back() -> None:
    w = World()
    w.start()
    w.advance(10.0, to_ok=100)  # -> 25%
    status = w.manager.control("app", "pause")
    assert status.state == RolloutState.PAUSED and "paused at 25%" in status.message
    status = w.advance(30.0, to_ok=100)
    assert status.weight_percent == 25.0 and status.state == RolloutState.PAUSED
    status = w.manager.control("app", "resume")
    assert status.state == RolloutState.RUNNING and status.step_started_at == w.clock.now
    assert w.advance(9.0, to_ok=100).weight_percent == 25.0
    assert w.advance(1.0, to_ok=100).weight_percent == 50.0
    status = w.manager.control("app", "abort")
    assert status.state == RolloutState.ABORTED and w.split() == {}
    with pytest.raises(ServeConfigError, match="has already ended"):
        w.manager.control("app", "resume")


def test_deleting_the_new_app_or_the_owner_ends_the_rollout() -> None:
    w = World("app", "v2")
    w.start()
    w.apps["v2"].deleting = True
    w.traffic.app_deleted("v2")
    w.manager.app_deleted("v2")
    status = w.manager.status("app")
    assert status is not None and status.state == RolloutState.ABORTED
    assert "'v2' (the new version) is being deleted" in status.message
    assert w.split() == {}
    w = World("app", "v2")
    w.start()
    w.apps["app"].deleting = True
    w.traffic.app_deleted("app")
    w.manager.app_deleted("app")
    status = w.manager.status("app")
    assert status is not None and status.state == RolloutState.ABORTED
    assert "application 'app' is being deleted" in status.message


def test_a_split_changed_by_someone_else_ends_the_rollout() -> None:
    w = World()
    w.start()
    w.traffic.set_split(w.apps, "app", {"app": 0.5, "v2": 0.5})
    status = w.advance(1.0)
    assert status.state == RolloutState.ABORTED and "changed outside the rollout" in status.message
    assert w.split() == {"app": 0.5, "v2": 0.5}


def test_retire_scales_the_old_app_to_zero_and_says_so() -> None:
    w = World()
    w.start(retire=True, steps=[50, 100])
    w.advance(10.0, to_ok=100)
    status = w.advance(10.0, to_ok=100)
    assert status.state == RolloutState.SUCCEEDED and "'app' was retired" in status.message
    assert w.scaled == [("app#Ingress_app", 0)]
    assert w.apps["app"].retired is not None
    assert "Retired by the rollout of 'app' to 'v2'" in w.apps["app"].message
    w.manager.app_deployed("app")  # redeployed: back to normal
    assert w.apps["app"].retired is None and "Retired" not in w.apps["app"].message


def test_a_later_rollout_starts_from_the_app_answering_everything() -> None:
    w = World("app", "v2", "v3")
    w.start(steps=[100])
    w.advance(10.0, to_ok=100)
    assert w.split() == {"v2": 1.0}
    status = w.start(to="v3", steps=[50, 100])
    assert status.from_app == "v2"
    assert w.split() == {"v2": 0.5, "v3": 0.5}
    w.clock.now += 10.0
    w.metrics.serve("v3", 5, 5)  # 50% errors: rolled back to v2, not to the owner
    w.manager.tick()
    assert w.manager.status("app").state == RolloutState.ROLLED_BACK  # type: ignore[union-attr]
    assert w.split() == {"v2": 1.0}


def test_checkpoint_round_trip_restarts_the_current_step() -> None:
    w = World(settle_s=3.0)
    w.start()
    w.advance(10.0, to_ok=100)  # -> 25%
    saved = pickle.loads(pickle.dumps(w.manager.to_checkpoint()))
    restored = RolloutManager(w.apps, w.traffic, w.clock, sample=w.metrics.sample, settle_s=3.0)
    w.clock.now += 100.0
    restored.restore(saved)
    w.manager = restored
    status = restored.status("app")
    assert status is not None and status.state == RolloutState.RUNNING
    assert (status.step, status.weight_percent, len(status.history)) == (1, 25.0, 1)
    assert "after a head restart" in status.message
    assert w.advance(2.0, to_ok=100).weight_percent == 25.0  # settling: no baseline yet
    assert w.advance(2.0, to_ok=100).weight_percent == 25.0  # baseline taken now
    assert w.advance(9.0, to_ok=100).weight_percent == 25.0
    assert w.advance(1.0, to_ok=100).weight_percent == 50.0
    assert InstanceCheckpoint(1, "n", None, []).rollouts == {}  # old checkpoints: none


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": [25, 5, 100]}, "must increase strictly"),
        ({"steps": [5, 5, 100]}, "must increase strictly"),
        ({"steps": [0, 100]}, r"step 0 is not a percent in \(0, 100\]"),
        ({"steps": [50, 150]}, "step 150 is not a percent"),
        ({"steps": []}, "'steps' is empty"),
        ({"steps": "5,25"}, "must be a list of percents"),
        ({"interval_s": 0}, "'interval_s' must be > 0"),
        ({"max_error_rate": -0.1}, "'max_error_rate' is a fraction"),
        ({"max_p99_ms": -1}, "'max_p99_ms' must be >= 0"),
        ({"min_requests": -1}, "'min_requests' must be a whole number"),
        ({"retire": True, "steps": [5, 50]}, "'retire' needs a last step of 100"),
        ({"colour": "red"}, r"unknown option\(s\) \['colour'\]"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ServeConfigError, match=message):
        RolloutOptions.parse(options)


def test_refused_starts_change_nothing() -> None:
    w = World("app", "v2", "other")
    with pytest.raises(ServeConfigError, match="no application 'nope'"):
        w.start(to="nope")
    with pytest.raises(ServeConfigError, match="'to' is 'app' itself"):
        w.start(to="app")
    w.apps["other"].deleting = True
    with pytest.raises(ServeConfigError, match="it is being deleted"):
        w.start(to="other")
    w.traffic.set_split(w.apps, "app", {"app": 0.8, "v2": 0.2})
    with pytest.raises(ServeConfigError, match="already splits its traffic"):
        w.start()
    w.traffic.set_split(w.apps, "app", {"v2": 1.0})
    with pytest.raises(ServeConfigError, match="'v2' already answers all"):
        w.start()
    assert w.manager.status("app") is None and w.split() == {"v2": 1.0}


def test_a_second_rollout_of_the_same_app_is_refused_while_one_runs() -> None:
    w = World("app", "v2", "v3")
    w.start()
    with pytest.raises(ServeConfigError, match="a rollout to 'v2' is RUNNING"):
        w.start(to="v3")
    w.manager.control("app", "abort")
    assert w.start(to="v3").to == "v3"


def test_limits_need_metrics() -> None:
    w = World(metrics_enabled=False)
    with pytest.raises(ServeConfigError, match="SCHOONER_METRICS=0"):
        w.start()
    status = w.start(max_error_rate=None, max_p99_ms=None, steps=[50, 100])
    assert w.advance(10.0).weight_percent == 100.0  # no metrics: steps go by time
    assert status.state == RolloutState.RUNNING


def test_status_round_trips_through_plain_data() -> None:
    w = World()
    w.start()
    status = w.advance(10.0, to_ok=100)
    assert RolloutStatus.from_dict(status.to_dict()) == status


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1.5", 1.5), ("45", 45.0), ("1h", 3600.0)],
)
def test_cli_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "v2", "--interval", "soon"], "--interval 'soon' is not a duration"),
        (["--to", "v2", "--interval", "0s"], "--interval must be longer than 0"),
        (["--to", "v2", "--steps", "5,x"], "--steps '5,x' must be comma-separated percents"),
        (["--to", "v2", "--max-error-rate", "1%"], "--max-error-rate must be a number"),
        (["--to", "v2", "--min-requests", "-3"], "--min-requests must be a whole number"),
        ([], "give --to NEW_APP to start a rollout"),
    ],
)
def test_cli_bad_values_exit_1_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["rollout", "app", "--address", "http://127.0.0.1:9", *argv])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err
