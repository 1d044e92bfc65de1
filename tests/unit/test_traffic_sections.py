"""Traffic sections of config documents: the schema (forms, errors naming the application
and the entry), the check of a whole document against the state it would produce, how
it is applied (no rebuild for a change of weights), and the recent rates' ring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_app_stats import _proxy
from test_declarative import (  # instant_sleeps: autouse, as in those tests
    Harness,
    declarative_spec,
    document,
    entry,
    instant_sleeps,  # noqa: F401
    run,
)

from schooner.builder import BuildResult
from schooner.controller.traffic_config import RecentRates, policy_from_body
from schooner.exceptions import ServeConfigError
from schooner.schema import ApplicationStatusOverview, parse_config_document

# -- the schema ---------------------------------------------------------------------------


def _app(traffic: Any, name: str = "app") -> dict[str, Any]:
    return {"applications": [{"name": name, "import_path": "m:app", "traffic": traffic}]}


@pytest.mark.parametrize(
    "traffic",
    [
        {"split": [{"app": "app", "weight": 0.9}, {"app": "canary", "weight": 0.1}]},
        {"split": {"app": 0.9, "canary": 0.1}},
    ],
)
def test_a_split_is_a_list_of_entries_or_a_mapping(traffic: Any) -> None:
    (app,) = parse_config_document(_app(traffic)).applications
    assert app.sets_traffic and app.traffic is not None
    assert app.traffic.split == {"app": 0.9, "canary": 0.1} and app.traffic.shadows == {}


def test_the_section_is_written_back_as_lists_and_reads_back_the_same() -> None:
    doc = parse_config_document(
        _app({"split": {"app": 0.5, "canary": 0.5}, "shadows": {"shadow": 0.25}})
    )
    dumped = doc.model_dump(mode="json", exclude_unset=True)
    assert dumped["applications"][0]["traffic"] == {
        "split": [{"app": "app", "weight": 0.5}, {"app": "canary", "weight": 0.5}],
        "shadows": [{"app": "shadow", "fraction": 0.25}],
    }
    again = parse_config_document(dumped).applications[0].traffic
    assert again == doc.applications[0].traffic


def test_with_without_and_empty_traffic() -> None:
    without = {"applications": [{"name": "app", "import_path": "m:app"}]}
    assert not parse_config_document(without).applications[0].sets_traffic
    for empty in ({}, None):
        (app,) = parse_config_document(_app(empty)).applications
        assert app.sets_traffic  # given: the policy is removed
        assert app.traffic is None or (not app.traffic.split and not app.traffic.shadows)
    only_shadows = parse_config_document(_app({"shadows": [{"app": "s", "fraction": 1}]}))
    dumped = only_shadows.model_dump(mode="json", exclude_unset=True)
    assert dumped["applications"][0]["traffic"] == {"shadows": [{"app": "s", "fraction": 1.0}]}


@pytest.mark.parametrize(
    ("traffic", "words"),
    [
        (
            {"split": [{"app": "a", "weight": 0.5}, {"app": "a", "weight": 0.5}]},
            ["split[1] ('a')", "listed twice", "entries 0 and 1"],
        ),
        ({"split": {"app": 0.5, "canary": 0.4}}, ["weights sum to 0.9", "must sum to 1"]),
        ({"split": {"app": 1.5, "canary": -0.5}}, ["split ('canary')", "weight is -0.5", ">= 0"]),
        ({"split": [{"app": "a", "weight": "half"}]}, ["split[0] ('a')", "must be a number"]),
        ({"split": [{"app": "a", "weight": True}]}, ["must be a number"]),
        ({"split": [{"app": "a", "weight": float("nan")}]}, ["finite"]),
        ({"split": [{"app": "a"}]}, ["split[0] ('a')", "'weight' is missing"]),
        ({"split": [{"app": "a", "wieght": 1}]}, ["split[0]", "unknown key(s) ['wieght']"]),
        ({"split": [{"weight": 1}]}, ["split[0]", "'app' must be an application name"]),
        ({"split": ["a"]}, ["split[0]", "expected a mapping {app: NAME, weight: NUMBER}"]),
        ({"split": "a=1"}, ["split must be a list", "or a mapping"]),
        ({"shadows": [{"app": "s", "fraction": 1.5}]}, ["shadows[0] ('s')", "between 0 and 1"]),
        ({"shadows": {"s": -0.1}}, ["shadows ('s')", "fraction is -0.1"]),
        ({"shadows": {"app": 0.5}}, ["'app' cannot shadow itself"]),
        ({"shadow": {"s": 0.5}}, ["unknown key 'shadow' (did you mean 'shadows'?)"]),
        ([{"app": "a"}], ["expected a mapping with 'split' and/or 'shadows'"]),
    ],
)
def test_a_bad_section_names_the_application_and_the_entry(traffic: Any, words: list[str]) -> None:
    with pytest.raises(ServeConfigError) as info:
        parse_config_document(_app(traffic))
    message = str(info.value)
    assert "applications[0] ('app')" in message
    for word in words:
        assert word in message, message


def test_the_single_application_form_does_not_take_traffic() -> None:
    with pytest.raises(ServeConfigError, match="not supported in the single-application form"):
        parse_config_document({"import_path": "m:app", "traffic": {}})


def test_the_status_overview_carries_the_policy() -> None:
    data = {"status": "RUNNING", "deployments": {}, "traffic": {"split": {"a": 1.0}}}
    overview = ApplicationStatusOverview.from_dict(data)
    assert overview.traffic == {"split": {"a": 1.0}}
    assert overview.to_dict()["traffic"] == {"split": {"a": 1.0}}
    plain = ApplicationStatusOverview.from_dict({"status": "RUNNING", "traffic": None})
    assert plain.traffic is None and "traffic" not in plain.to_dict()


def test_the_body_of_a_traffic_put() -> None:
    assert policy_from_body({"split": {"a": 0.5, "b": 0.5}}) == ({"a": 0.5, "b": 0.5}, {})
    assert policy_from_body({}) == ({}, {})
    with pytest.raises(ServeConfigError, match="must be a JSON object"):
        policy_from_body([1])
    with pytest.raises(ServeConfigError, match=r"Invalid traffic policy: split\[0\] \('a'\)"):
        policy_from_body({"split": [{"app": "a", "weight": -1}]})


# -- documents applied to the controller ------------------------------------------------------


def _traffic(**sections: Any) -> dict[str, Any]:
    return {"traffic": sections}


def test_a_section_is_set_at_once_and_takes_effect_when_the_apps_are_built(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        doc = document(
            entry("app", "/", **_traffic(split={"app": 0.8, "canary": 0.2})),
            entry("canary", None),
        )
        h.dc.apply(doc)
        # Set while both still build: nothing published yet (no ingress).
        assert h.ctl.traffic.describe("app")["split"] == {"app": 0.8, "canary": 0.2}
        assert h.ctl.traffic.policies(h.ctl.apps) == {}
        await h.builder(2)
        # The build requests do not carry the section (not the builder's business).
        assert all("traffic" not in _request(p).app for p in h.builders())
        await build(h, "app", "canary")
        (policy,) = h.ctl.traffic.policies(h.ctl.apps).values()
        assert [(t.app_name, t.weight) for t in policy.split] == [("app", 0.8), ("canary", 0.2)]

    run(tmp_path, body)


async def build(h: Harness, *names: str) -> None:
    """Finish the builds of ``names`` (the first with route '/', the others none)."""
    for _ in range(100):
        if len([p for p in h.builders() if p.exit_code is None]) >= len(names):
            break
        await asyncio.sleep(0)
    for index, name in enumerate(names):
        spec = declarative_spec(name, "/" if index == 0 else None)
        await h.finish(h.builder_of(name), BuildResult(spec=spec))


def _request(process: Any) -> Any:
    from test_declarative import request_of

    return request_of(process)


def test_a_change_of_weights_alone_rebuilds_quietly(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first = document(
            entry("app", "/", **_traffic(split={"app": 0.8, "canary": 0.2})),
            entry("canary", None),
        )
        h.dc.apply(first)
        await build(h, "app", "canary")
        await h.run_replicas()
        before = h.snapshot()
        h.dc.apply(
            document(
                entry("app", "/", **_traffic(split={"app": 0.5, "canary": 0.5})),
                entry("canary", None),
            )
        )
        assert h.ctl.traffic.describe("app")["split"] == {"app": 0.5, "canary": 0.5}
        assert h.snapshot() == before  # not DEPLOYING: the application did not change
        # The echo (GET config) has the new section.
        assert h.dc.app_configs["app"]["traffic"]["split"][1] == {"app": "canary", "weight": 0.5}

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("apps", "words"),
    [
        (
            [entry("app", "/", **_traffic(split={"app": 0.5, "nope": 0.5}))],
            ["traffic of application 'app'", "no application 'nope'", "must be in the config"],
        ),
        (
            [
                entry("app", "/", **_traffic(split={"app": 0.5, "b": 0.5})),
                entry("b", None, **_traffic(split={"b": 0.5, "c": 0.5})),
                entry("c", None),
            ],
            ["splits do not chain"],
        ),
        (
            [
                entry("app", "/", **_traffic(shadows={"b": 0.5})),
                entry("b", None, **_traffic(shadows={"c": 0.5})),
                entry("c", None, **_traffic(shadows={"app": 0.5})),
            ],
            ["cycle of shadows", "c -> app -> b -> c"],
        ),
        (
            # 'old' was deployed by the previous config and is not in this one: it goes.
            [entry("app", "/", **_traffic(split={"app": 0.5, "old": 0.5}))],
            ["no application 'old'"],
        ),
    ],
)
def test_a_bad_document_is_rejected_before_anything_changes(
    tmp_path: Path, apps: list[dict[str, Any]], words: list[str]
) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(
            document(entry("app", "/", **_traffic(shadows={"old": 0.5})), entry("old", None))
        )
        await build(h, "app", "old")
        accepted, before, launched = h.dc.document, h.snapshot(), len(h.launcher.processes)
        policy = h.ctl.traffic.describe("app")
        with pytest.raises(ServeConfigError) as info:
            h.dc.apply(document(*apps))
        for word in words:
            assert word in str(info.value), str(info.value)
        assert h.dc.document is accepted and h.snapshot() == before
        assert len(h.launcher.processes) == launched
        assert h.ctl.traffic.describe("app") == policy

    run(tmp_path, body)


def test_sections_are_checked_as_a_whole_whatever_their_order(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(declarative_spec("b", None))
        h.ctl.deploy_app(declarative_spec("c", None))
        h.ctl.traffic.set_split(h.ctl.apps, "b", {"b": 0.5, "c": 0.5})
        # 'app' splits to 'b' while the same document removes the split of 'b': fine.
        h.dc.apply(
            document(
                entry("app", "/", **_traffic(split={"app": 0.5, "b": 0.5})),
                entry("b", None, traffic={}),
                entry("c", None),
            )
        )
        assert h.ctl.traffic.describe("app")["split"] == {"app": 0.5, "b": 0.5}
        assert h.ctl.traffic.describe("b") == {"split": {}, "shadows": {}}

    run(tmp_path, body)


def test_an_entry_without_traffic_leaves_the_policy_alone(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry("app", "/"), entry("canary", None)))
        h.ctl.traffic.set_split(h.ctl.apps, "app", {"app": 0.9, "canary": 0.1})
        h.dc.apply(document(entry("app", "/"), entry("canary", None)))
        assert h.ctl.traffic.describe("app")["split"] == {"app": 0.9, "canary": 0.1}
        h.dc.apply(document(entry("app", "/", traffic={}), entry("canary", None)))
        assert h.ctl.traffic.describe("app") == {"split": {}, "shadows": {}}

    run(tmp_path, body)


# -- recent rates ------------------------------------------------------------------------------


def test_recent_rates_sample_at_most_once_a_second_and_span_the_window(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(declarative_spec("a", "/"))
        now = [100.0]
        served = [0]
        ring = RecentRates(
            lambda: [("proxy-1", _proxy("a", served[0], 0, [5.0] * served[0]))],
            clock=lambda: now[0],
        )
        assert ring.rates("a") == {
            "request_rate": 0.0,
            "error_rate": 0.0,
            "p99_ms": None,
            "seconds": 0.0,
        }
        for _ in range(30):  # 10 requests a second for 30 s, reports twice a second
            for _ in range(2):
                ring.maybe_sample(h.ctl.apps)
                now[0] += 0.5
                served[0] += 5
        rates = ring.rates("a")
        assert 10.0 <= rates["seconds"] <= 11.0
        assert rates["request_rate"] == pytest.approx(10.0, rel=0.1)
        assert rates["p99_ms"] is not None and rates["p99_ms"] <= 5.0
        assert len(ring._rings["a"]) <= ring._size  # a small ring, not a history
        h.ctl.delete_app("a")
        h.ctl.apps.clear()
        now[0] += 1
        ring.maybe_sample(h.ctl.apps)
        assert "a" not in ring._rings

    run(tmp_path, body)
