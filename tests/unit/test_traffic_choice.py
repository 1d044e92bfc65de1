"""The per-request traffic choices (router/traffic.py): split accuracy, shard-key
stability and minimal remapping, shadow sampling, and the compiled-policy cache."""

from __future__ import annotations

import pickle
import random
from collections import Counter

from schooner.handle import DeploymentHandle
from schooner.router.traffic import CompiledPolicy, compile_policies
from schooner.rpc.messages import DeploymentID, TrafficPolicy, TrafficTarget


def _policy(
    split: dict[str, float], shadows: dict[str, float] | None = None, owner: str = "app"
) -> TrafficPolicy:
    return TrafficPolicy(
        owner,
        DeploymentID("Ingress", owner),
        tuple(TrafficTarget(a, DeploymentID("Ingress", a), w) for a, w in split.items()),
        tuple(TrafficTarget(a, DeploymentID("Ingress", a), f) for a, f in (shadows or {}).items()),
    )


def test_random_split_lands_within_one_point_over_100k_draws() -> None:
    chooser = CompiledPolicy(_policy({"app": 0.7, "canary": 0.3}), random.Random(7).random)
    counts = Counter(chooser.choose().app_name for _ in range(100_000))
    assert abs(counts["app"] / 100_000 - 0.7) < 0.01, counts
    assert abs(counts["canary"] / 100_000 - 0.3) < 0.01, counts


def test_the_chosen_target_carries_its_ingress() -> None:
    chooser = CompiledPolicy(_policy({"canary": 1.0}))
    assert chooser.choose().ingress == DeploymentID("Ingress", "canary")
    assert chooser.choose("some key").app_name == "canary"


def test_zero_weight_target_is_never_chosen_with_or_without_a_key() -> None:
    chooser = CompiledPolicy(_policy({"app": 0.5, "dead": 0.0, "canary": 0.5}))
    chosen = {chooser.choose().app_name for _ in range(5_000)}
    chosen |= {chooser.choose(f"user-{i}").app_name for i in range(5_000)}
    assert chosen == {"app", "canary"}


def test_rng_at_the_edges_stays_in_range() -> None:
    for value in (0.0, 0.6999999, 0.7, 0.9999999999):
        chooser = CompiledPolicy(_policy({"app": 0.7, "canary": 0.3}), lambda v=value: v)
        assert chooser.choose().app_name == ("app" if value < 0.7 else "canary")


def test_a_policy_without_split_answers_with_the_owner() -> None:
    chooser = CompiledPolicy(_policy({}, {"shadow": 0.5}))
    assert chooser.choose().app_name == "app"
    assert chooser.choose("k").ingress == DeploymentID("Ingress", "app")


def test_same_key_same_app_across_independently_built_choosers() -> None:
    a = CompiledPolicy(_policy({"app": 0.5, "canary": 0.3, "other": 0.2}))
    b = CompiledPolicy(_policy({"app": 0.5, "canary": 0.3, "other": 0.2}))
    keys = [f"user-{i}" for i in range(2_000)]
    assert [a.choose(k).app_name for k in keys] == [b.choose(k).app_name for k in keys]
    assert all(a.choose(k) == a.choose(k) for k in keys[:100])  # repeatable
    counts = Counter(a.choose(k).app_name for k in keys)
    assert abs(counts["app"] / 2_000 - 0.5) < 0.04, counts  # keys follow the weights too


def test_weight_change_moves_only_the_keys_it_must() -> None:
    before = CompiledPolicy(_policy({"app": 0.9, "canary": 0.1}))
    after = CompiledPolicy(_policy({"app": 0.8, "canary": 0.2}))
    keys = [f"session-{i}" for i in range(10_000)]
    moves = Counter((before.choose(k).app_name, after.choose(k).app_name) for k in keys)
    assert moves[("canary", "app")] == 0, moves  # nobody comes back to the first app
    moved = moves[("app", "canary")] / len(keys)
    assert 0.08 < moved < 0.12, moves  # ~10% (= 0.2 - 0.1) of the keys move


def test_shadow_sampling_follows_each_fraction_independently() -> None:
    rng = random.Random(11)
    chooser = CompiledPolicy(_policy({}, {"half": 0.5, "tenth": 0.1, "all": 1.0}), rng.random)
    counts: Counter[str] = Counter()
    both = 0
    draws = 50_000
    for _ in range(draws):
        names = {s.app_name for s in chooser.shadow_copies()}
        counts.update(names)
        both += {"half", "tenth"} <= names
    assert counts["all"] == draws
    assert abs(counts["half"] / draws - 0.5) < 0.01, counts
    assert abs(counts["tenth"] / draws - 0.1) < 0.01, counts
    assert abs(both / draws - 0.05) < 0.01  # independent draws: 0.5 * 0.1


def test_no_shadows_means_an_empty_tuple_and_no_draw() -> None:
    def never() -> float:
        raise AssertionError("no random draw is needed")

    chooser = CompiledPolicy(_policy({"app": 1.0}, {"zero": 0.0}), never)
    assert chooser.shadow_copies() == ()
    assert chooser.choose().app_name == "app"


def test_compile_reuses_unchanged_policies_and_replaces_the_mapping() -> None:
    p1 = _policy({"app": 0.9, "canary": 0.1})
    p2 = _policy({"b": 0.5, "b2": 0.5}, owner="b")
    first = compile_policies({"x": p1, "y": p2}, {})
    assert set(first) == {DeploymentID("Ingress", "app"), DeploymentID("Ingress", "b")}
    changed = _policy({"app": 0.8, "canary": 0.2})
    second = compile_policies({"x": changed, "y": p2}, first)
    assert second is not first
    assert second[DeploymentID("Ingress", "b")] is first[DeploymentID("Ingress", "b")]
    assert second[DeploymentID("Ingress", "app")].policy == changed
    assert compile_policies(None, second) == {}


def test_shard_key_option_survives_pickling_and_is_a_string() -> None:
    handle = DeploymentHandle("Ingress", "app").options(shard_key="user-1", method_name="m")
    copy = pickle.loads(pickle.dumps(handle))
    assert copy._options.shard_key == "user-1" and copy == handle
    assert DeploymentHandle("Ingress", "app")._options.shard_key == ""
    try:
        DeploymentHandle("Ingress", "app").options(shard_key=7)  # type: ignore[arg-type]
    except TypeError as exc:
        assert "shard_key" in str(exc)
    else:
        raise AssertionError("a non-string shard key must be refused")
