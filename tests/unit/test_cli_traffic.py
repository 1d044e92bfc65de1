"""``schooner traffic``: its arguments, the policy they ask for, and what it prints."""

from __future__ import annotations

from typing import Any

import pytest

from schooner.cli.main import build_parser
from schooner.cli.traffic_cmd import format_traffic, new_policy, parse_pairs
from schooner.exceptions import ServeConfigError

CURRENT = {"split": {"app": 0.9, "canary": 0.1}, "shadows": {"shadow": 0.5}}


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["traffic", "app", *argv])


def test_the_command_and_its_options_parse() -> None:
    args = _args(
        "--set", "app=0.8", "canary=0.2", "--shadow", "s=0.5", "--shadow", "t=0", "-a", "x"
    )
    assert (args.app, args.set, args.shadow, args.clear, args.address) == (
        "app",
        ["app=0.8", "canary=0.2"],
        ["s=0.5", "t=0"],
        False,
        "x",
    )
    assert args.handler == "schooner.cli.traffic_cmd:cmd_traffic"


def test_no_option_changes_nothing() -> None:
    assert new_policy(CURRENT, _args()) is None


def test_set_replaces_the_split_and_keeps_the_shadows() -> None:
    assert new_policy(CURRENT, _args("--set", "app=0.5", "canary=0.5")) == (
        {"app": 0.5, "canary": 0.5},
        {"shadow": 0.5},
    )


def test_shadow_adds_changes_and_removes() -> None:
    split, shadows = new_policy(
        CURRENT, _args("--shadow", "shadow=0", "--shadow", "other=0.25")
    ) or ({}, {})
    assert split == CURRENT["split"] and shadows == {"other": 0.25}


def test_clear_starts_from_nothing() -> None:
    assert new_policy(CURRENT, _args("--clear")) == ({}, {})
    assert new_policy(CURRENT, _args("--clear", "--shadow", "s=1")) == ({}, {"s": 1.0})


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--set", "app=abc", "canary=1"], ["--set 'app=abc'", "'abc' is not a number"]),
        (["--set", "app"], ["--set 'app'", "expected APP=WEIGHT"]),
        (["--set", "=1"], ["--set '=1'", "expected APP=WEIGHT"]),
        (["--set", "app=-0.5", "canary=1.5"], ["--set 'app=-0.5'", "must be >= 0"]),
        (["--set", "app=0.5", "app=0.5"], ["--set 'app=0.5'", "given twice"]),
        (["--set", "app=0.6", "canary=0.3"], ["--set app=0.6 canary=0.3", "sum to 0.9"]),
        (["--set", "app=inf"], ["--set 'app=inf'", "must be >= 0"]),
        (["--shadow", "s=1.5"], ["--shadow 's=1.5'", "between 0 and 1"]),
        (["--shadow", "s"], ["--shadow 's'", "expected APP=FRACTION"]),
    ],
)
def test_bad_arguments_say_which_and_what_is_wrong(argv: list[str], words: list[str]) -> None:
    with pytest.raises(ServeConfigError) as info:
        new_policy(CURRENT, _args(*argv))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_parse_pairs() -> None:
    assert parse_pairs("--set", [" a =0.5", "b=.5"], fraction=False) == {"a": 0.5, "b": 0.5}


def test_the_printout_shows_split_shadows_and_rates() -> None:
    policy = {
        **CURRENT,
        "rates": {
            "app": {"request_rate": 12.345, "error_rate": 0.0, "p99_ms": 41.25, "seconds": 10.2},
            "canary": {"request_rate": 1.5, "error_rate": 0.125, "p99_ms": None, "seconds": 10.2},
        },
    }
    text = format_traffic("app", policy)
    assert text.splitlines() == [
        "Application: app",
        "Split:",
        "  app     0.9",
        "  canary  0.1",
        "Shadows:",
        "  shadow  0.5",
        "Rates (last 10 s):",
        "  APPLICATION  REQ/S  ERRORS  P99 MS",
        "  app          12.35   0.00%    41.2",
        "  canary        1.50  12.50%       -",
    ]


def test_the_printout_of_no_policy() -> None:
    text = format_traffic("app", {"split": {}, "shadows": {}, "rates": {"app": {}}})
    assert "Split: none (all requests go to app)" in text
    assert "Shadows: none" in text
    assert "Rates (no readings yet):" in text


def test_schooner_status_shows_a_policy_only_where_there_is_one() -> None:
    from schooner.cli.output import status_document

    app = {"status": "RUNNING", "message": "", "last_deployed_time_s": 1.0, "deployments": {}}
    details = {
        "applications": {
            "app": {**app, "traffic": {"split": {"app": 0.9, "c": 0.1}, "shadows": {}}},
            "c": {**app, "traffic": None},
        }
    }
    shown = status_document(details)["applications"]
    assert shown["app"]["traffic"] == {"split": {"app": 0.9, "c": 0.1}}
    assert "traffic" not in shown["c"]


def test_schooner_status_shows_the_latest_rollout_in_one_line() -> None:
    from schooner.cli.output import status_document

    app = {"status": "RUNNING", "message": "", "last_deployed_time_s": 1.0, "deployments": {}}
    rollout = {
        "to": "v2",
        "state": "ROLLED_BACK",
        "weight_percent": 0.0,
        "message": "rolled back at 25%: error rate 0.5 > 0.01",
    }
    details = {"applications": {"app": {**app, "rollout": rollout}, "v2": {**app, "rollout": None}}}
    shown = status_document(details)["applications"]
    assert shown["app"]["rollout"] == (
        "to v2 (ROLLED_BACK, 0% of requests): rolled back at 25%: error rate 0.5 > 0.01"
    )
    assert "rollout" not in shown["v2"]


# -- the admin server's routes (a fake backend) -------------------------------------------------


class TrafficBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.policy: dict[str, Any] = {"split": {}, "shadows": {}}

    def details(
        self, api_type: str | None, include: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        self.calls.append(("details", api_type, include))
        return {"applications": {}}

    def get_traffic(self, app: str) -> dict[str, Any]:
        from schooner.admin.server import TrafficNotFound

        if app != "app":
            raise TrafficNotFound(f"There is no application '{app}'.")
        return {**self.policy, "rates": {}}

    def put_traffic(self, app: str, body: Any) -> None:
        from schooner.controller.traffic_config import policy_from_body

        self.get_traffic(app)
        split, shadows = policy_from_body(body)
        self.policy = {"split": split, "shadows": shadows}


@pytest.fixture
def admin() -> Any:
    import httpx
    from test_admin_server import Running

    backend = TrafficBackend()
    running = Running(backend, None)  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            yield backend, client
    finally:
        running.stop()


def test_details_include_traffic_only_when_asked(admin: Any) -> None:
    backend, client = admin
    assert client.get("/api/serve/applications/").status_code == 200
    resp = client.get("/api/serve/applications/", params={"include": "traffic", "api_type": "x"})
    assert resp.status_code == 400  # api_type is checked first, as before
    assert client.get("/api/serve/applications/?include=traffic").status_code == 200
    assert client.get("/api/serve/applications/?include=Rollout,traffic").status_code == 200
    assert backend.calls == [
        ("details", None, frozenset()),
        ("details", None, {"traffic"}),
        ("details", None, {"traffic", "rollout"}),
    ]
    resp = client.get("/api/serve/applications/?include=replicas,traffic")
    assert resp.status_code == 400
    assert (
        "Invalid 'include' value: replicas. Must be one or more of: rollout, traffic" in resp.text
    )


def test_traffic_routes(admin: Any) -> None:
    _, client = admin
    resp = client.put("/api/schooner/traffic/app", json={"split": {"app": 0.5, "b": 0.5}})
    assert resp.status_code == 200
    assert resp.json() == {"split": {"app": 0.5, "b": 0.5}, "shadows": {}, "rates": {}}
    resp = client.put("/api/schooner/traffic/app", json={"split": {"app": 0.5}})
    assert resp.status_code == 400 and "sum to 0.5" in resp.json()["error"]
    assert client.get("/api/schooner/traffic/nope").status_code == 404
    assert client.put("/api/schooner/traffic/nope", json={}).status_code == 404
    assert client.post("/api/schooner/traffic/app").status_code == 405
    assert client.get("/api/schooner/traffic/app").json()["split"] == {"app": 0.5, "b": 0.5}


def test_a_put_with_a_stale_if_match_is_refused_with_412(admin: Any) -> None:
    backend, client = admin
    read = client.get("/api/schooner/traffic/app")
    etag = read.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert client.get("/api/schooner/traffic/app").headers["etag"] == etag  # stable
    # Someone else changes the policy after it was read.
    backend.policy = {"split": {"app": 0.5, "b": 0.5}, "shadows": {}}
    stale = client.put(
        "/api/schooner/traffic/app",
        json={"split": {}, "shadows": {"s": 0.5}},
        headers={"if-match": etag},
    )
    assert stale.status_code == 412
    assert "changed since it was read" in stale.json()["error"]
    assert backend.policy["split"] == {"app": 0.5, "b": 0.5}  # untouched
    fresh = stale.headers["etag"]
    assert fresh != etag and client.get("/api/schooner/traffic/app").headers["etag"] == fresh
    ok = client.put(
        "/api/schooner/traffic/app",
        json={"split": {"app": 0.5, "b": 0.5}, "shadows": {"s": 0.5}},
        headers={"if-match": fresh},
    )
    assert ok.status_code == 200 and ok.headers["etag"] not in (etag, fresh)
    assert (
        client.put("/api/schooner/traffic/app", json={}, headers={"if-match": "*"}).status_code
        == 200
    )  # any current policy


def test_the_cli_keeps_a_change_made_between_its_read_and_its_write(
    admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--shadow`` adds to the split as it is when written, not as it was first read."""
    from schooner.cli.traffic_cmd import cmd_traffic

    backend, client = admin
    backend.policy = {"split": {}, "shadows": {}}
    reads = 0
    get_traffic = backend.get_traffic

    def racing_get(app: str) -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 2:  # after the CLI's read, before its write: another writer's split
            backend.policy = {"split": {"app": 0.9, "b": 0.1}, "shadows": {}}
        return get_traffic(app)

    backend.get_traffic = racing_get
    assert cmd_traffic(_args("--shadow", "s=0.25", "-a", str(client.base_url))) == 0
    assert backend.policy == {"split": {"app": 0.9, "b": 0.1}, "shadows": {"s": 0.25}}
    out = capsys.readouterr().out
    assert "  b    0.1" in out and "  s  0.25" in out
