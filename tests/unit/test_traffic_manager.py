"""The controller's traffic goal: validation of splits and shadows, what routers get."""

from __future__ import annotations

import pytest
from controller_fakes import app_spec, dep_spec

from schooner.controller.state import ApplicationState, DeploymentState
from schooner.controller.traffic import TrafficManager
from schooner.exceptions import ServeConfigError


def _apps(*names: str) -> dict[str, ApplicationState]:
    apps = {}
    for name in names:
        spec = app_spec(name, f"/{name}" if name == "app" else None, dep_spec(f"Ingress_{name}"))
        deps = {d.name: DeploymentState.new(name, d) for d in spec.deployments}
        apps[name] = ApplicationState(spec, deps, 0.0)
    return apps


def test_a_valid_split_is_published_with_each_targets_ingress() -> None:
    apps = _apps("app", "canary")
    traffic = TrafficManager()
    traffic.set_split(apps, "app", {"app": 0.9, "canary": 0.1})
    (policy,) = traffic.policies(apps).values()
    assert policy.app_name == "app" and policy.ingress == apps["app"].deployments["Ingress_app"].id
    assert [(t.app_name, t.ingress.name, t.weight) for t in policy.split] == [
        ("app", "Ingress_app", 0.9),
        ("canary", "Ingress_canary", 0.1),
    ]
    assert traffic.describe("app") == {"split": {"app": 0.9, "canary": 0.1}, "shadows": {}}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"app": 0.5, "nope": 0.5}, "no application 'nope'"),
        ({"app": 0.5, "canary": 0.4}, "sum to 0.9"),
        ({"app": 1.2, "canary": -0.2}, "weight of 'canary' is -0.2"),
        ({"app": "half", "canary": 0.5}, "must be a number"),
        ({"app": float("nan"), "canary": 0.5}, "finite"),
    ],
)
def test_a_bad_split_is_refused_and_changes_nothing(
    weights: dict[str, object], message: str
) -> None:
    apps = _apps("app", "canary")
    traffic = TrafficManager()
    traffic.set_split(apps, "app", {"canary": 1.0})
    with pytest.raises(ServeConfigError, match=message) as info:
        traffic.set_split(apps, "app", weights)  # type: ignore[arg-type]
    assert "traffic of application 'app'" in str(info.value)
    assert traffic.describe("app")["split"] == {"canary": 1.0}


def test_splits_do_not_chain() -> None:
    apps = _apps("app", "b", "c")
    traffic = TrafficManager()
    traffic.set_split(apps, "b", {"b": 0.5, "c": 0.5})
    with pytest.raises(ServeConfigError, match="'b' splits its own traffic"):
        traffic.set_split(apps, "app", {"app": 0.5, "b": 0.5})
    traffic.set_split(apps, "c", None)
    with pytest.raises(ServeConfigError, match="receives traffic from the split of 'b'"):
        traffic.set_split(apps, "c", {"c": 0.5, "app": 0.5})


def test_all_to_the_owner_is_no_split() -> None:
    apps = _apps("app", "canary")
    traffic = TrafficManager()
    traffic.set_split(apps, "app", {"app": 0.5, "canary": 0.5})
    traffic.set_split(apps, "app", {"app": 1.0, "canary": 0.0})
    assert traffic.policies(apps) == {} and traffic.settings == {}


def test_shadows_are_validated_and_cycles_refused() -> None:
    apps = _apps("app", "a", "b")
    traffic = TrafficManager()
    traffic.set_shadow(apps, "app", "a", 0.25)
    traffic.set_shadow(apps, "a", "b", 1.0)
    with pytest.raises(ServeConfigError, match=r"cycle of shadows \(b -> app -> a -> b\)"):
        traffic.set_shadow(apps, "b", "app", 0.5)
    with pytest.raises(ServeConfigError, match="cannot shadow itself"):
        traffic.set_shadow(apps, "app", "app", 0.5)
    with pytest.raises(ServeConfigError, match="between 0 and 1"):
        traffic.set_shadow(apps, "app", "b", 1.5)
    policy = {p.app_name: p for p in traffic.policies(apps).values()}["app"]
    assert [(t.app_name, t.weight) for t in policy.shadows] == [("a", 0.25)]
    traffic.set_shadow(apps, "app", "a", 0)  # 0 removes it
    assert traffic.describe("app") == {"split": {}, "shadows": {}}


def test_a_deleted_target_gives_its_weight_back_to_the_owner() -> None:
    apps = _apps("app", "canary", "shadow")
    traffic = TrafficManager()
    traffic.set_split(apps, "app", {"app": 0.7, "canary": 0.3})
    traffic.set_shadow(apps, "app", "shadow", 0.5)
    apps["canary"].deleting = True  # while it is being deleted, routers skip it already
    (policy,) = traffic.policies(apps).values()
    assert [(t.app_name, t.weight) for t in policy.split] == [("app", 1.0)]
    traffic.app_deleted("canary")
    traffic.app_deleted("shadow")
    assert traffic.settings == {}


def test_the_setting_survives_a_checkpoint() -> None:
    apps = _apps("app", "canary")
    traffic = TrafficManager()
    traffic.set_split(apps, "app", {"app": 0.6, "canary": 0.4})
    restored = TrafficManager()
    restored.restore(traffic.to_checkpoint())
    assert restored.policies(apps) == traffic.policies(apps)
