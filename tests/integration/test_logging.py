"""logging_config applied in a real instance: JSON replica files whose every line parses,
user loggers tagged with the request that caused them, application-level configs, levels,
access lines on and off, logs_dir, a live change without a restart, and rotation."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from helpers import wait_for
from starlette.requests import Request

import schooner as serve
from conftest import Instance
from schooner import api

FIELDS = (
    "asctime",
    "levelname",
    "message",
    "component_name",
    "application",
    "deployment",
    "replica",
    "request_id",
    "route",
)


@serve.deployment
class Talker:
    """Logs through the loggers user code uses, at two levels, and prints."""

    def __call__(self, request: Request) -> str:
        logging.getLogger("ray.serve").info("ray.serve says hi")
        logging.getLogger("schooner").info("schooner says hi")
        logging.getLogger("ray").info("ray says hi")
        logging.getLogger("user.module").debug("a debug line")
        logging.getLogger("user.module").warning("a warning line")
        print("printed by the user")
        return "ok"

    def chatter(self, lines: int) -> int:
        for i in range(lines):
            logging.getLogger("ray.serve").info("line %05d %s", i, "x" * 80)
            print(f"printed {i:05d}")
        return lines


def replica_files(app: str, deployment: str, logs_dir: Path | None = None) -> list[Path]:
    assert api._head is not None
    where = logs_dir if logs_dir is not None else Path(api._head.session.logs)
    return sorted(where.glob(f"replica_{app}_{deployment}_*.log"))


def lines_of(app: str, deployment: str = "Talker", logs_dir: Path | None = None) -> list[str]:
    return [
        line
        for path in replica_files(app, deployment, logs_dir)
        for line in path.read_text().splitlines()
    ]


def call(instance: Instance, route: str) -> str:
    """One request with a request id of ours; returns the id."""
    request_id = uuid.uuid4().hex
    resp = instance.http.get(route, headers={"x-request-id": request_id})
    assert resp.status_code == 200, resp.text
    return request_id


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def wait_for_lines(app: str, *needles: str, logs_dir: Path | None = None) -> list[str]:
    """The replica's lines once every needle is in one of them (access lines are
    written within ~0.1 s)."""

    def ready() -> list[str] | None:
        lines = lines_of(app, logs_dir=logs_dir)
        text = "\n".join(lines)
        return lines if all(n in text for n in needles) else None

    found: list[str] = wait_for(ready, timeout_s=15, message=f"{needles} in {app}'s log")
    return found


def test_json_replica_file_every_line_parses_with_the_request_id(clean: Instance) -> None:
    serve.run(
        Talker.options(logging_config={"encoding": "JSON"}).bind(), name="j", route_prefix="/j"
    )
    request_id = call(clean, "/j")
    lines = wait_for_lines("j", "ray says hi", "printed by the user", "CALL __call__ OK")
    entries = json_lines(lines)  # every line: start-up lines, printed lines too
    for entry in entries:
        for field in FIELDS:
            assert field in entry, (field, entry)
        assert entry["component_name"] == "replica"
        assert (entry["application"], entry["deployment"]) == ("j", "Talker")
    by_message = {e["message"]: e for e in entries}
    for message in ("ray.serve says hi", "schooner says hi", "ray says hi"):
        user = by_message[message]
        assert (user["request_id"], user["route"]) == (request_id, "/j")
    assert "a debug line" not in by_message  # INFO by default
    printed = by_message["printed by the user"]
    assert printed["stream"] == "stdout" and printed["request_id"] == request_id
    (access,) = [e for e in entries if e["message"].startswith("CALL __call__ OK")]
    assert access["request_id"] == request_id
    assert access["status_code"] == "OK" and access["latency_ms"] >= 0 and access["method"]
    # The proxy keeps the instance's (default) TEXT lines, with its access line.
    assert api._head is not None
    proxy_log = Path(api._head.session.logs) / "proxy.log"
    wait_for(lambda: f"req={request_id} access - GET /j 200" in proxy_log.read_text())


def test_application_logging_config_applies_to_deployments_without_one(
    clean: Instance,
) -> None:
    serve.run(
        Talker.bind(),
        name="a",
        route_prefix="/a",
        logging_config={"encoding": "JSON", "log_level": "DEBUG"},
    )
    request_id = call(clean, "/a")
    entries = json_lines(wait_for_lines("a", "a debug line", "CALL __call__ OK"))
    debug = next(e for e in entries if e["message"] == "a debug line")
    assert debug["request_id"] == request_id and debug["levelname"] == "DEBUG"


def test_log_level_filters_and_access_log_can_be_off(clean: Instance) -> None:
    configs = {
        "debug": {"log_level": "DEBUG"},
        "warning": {"log_level": "WARNING"},
        "quiet": {"enable_access_log": False},
    }
    for name, config in configs.items():
        serve.run(Talker.options(logging_config=config).bind(), name=name, route_prefix=f"/{name}")
    for name in configs:
        call(clean, f"/{name}")
        call(clean, f"/{name}")
    # A process writes its queued access lines before its next line: once the second
    # call's warning is in a file, the first call's access line is there if it is on.
    text = {
        name: "\n".join(
            wait_for(
                lambda name=name: (
                    (lines := lines_of(name))
                    and sum("a warning line" in line for line in lines) == 2
                    and lines
                ),
                message=f"two warnings in {name}'s log",
            )
        )
        for name in configs
    }
    assert "a debug line" in text["debug"] and "CALL __call__ OK" in text["debug"]
    assert "a debug line" not in text["warning"] and "ray says hi" not in text["warning"]
    assert "CALL __call__" not in text["warning"]
    assert "CALL __call__" not in text["quiet"] and "ray says hi" in text["quiet"]


def test_logs_dir_and_a_live_change_without_restart(clean: Instance, tmp_path: Path) -> None:
    serve.run(Talker.bind(), name="live", route_prefix="/live")
    call(clean, "/live")
    wait_for_lines("live", "CALL __call__ OK")
    (before,) = replica_files("live", "Talker")
    replica_id = before.stem.rsplit("_", 1)[1]
    elsewhere = tmp_path / "elsewhere"
    serve.run(
        Talker.options(logging_config={"encoding": "JSON", "logs_dir": str(elsewhere)}).bind(),
        name="live",
        route_prefix="/live",
    )
    (moved,) = wait_for(lambda: replica_files("live", "Talker", elsewhere), timeout_s=15)
    assert moved.name == before.name  # the same replica: reconfigured, not restarted
    assert moved.stat().st_mode & 0o777 == 0o600
    request_id = call(clean, "/live")
    entries = json_lines(wait_for_lines("live", "CALL __call__ OK", logs_dir=elsewhere))
    assert any(e["request_id"] == request_id for e in entries)
    assert all(e["replica"] == replica_id for e in entries)
    details = serve.status()
    assert details.applications["live"].status == "RUNNING"


def test_replica_file_rotates_under_many_lines(clean: Instance) -> None:
    env = {"SCHOONER_LOG_ROTATION_MAX_BYTES": "20000", "SCHOONER_LOG_ROTATION_BACKUP_COUNT": "2"}
    handle = serve.run(
        Talker.options(ray_actor_options={"runtime_env": {"env_vars": env}}).bind(),
        name="rot",
        route_prefix="/rot",
    )
    assert handle.chatter.remote(2000).result() == 2000
    (path,) = replica_files("rot", "Talker")
    backups = sorted(path.parent.glob(path.name + ".*"))
    assert [p.name for p in backups] == [path.name + ".1", path.name + ".2"]
    for p in (path, *backups):
        assert p.stat().st_size <= 20000
        assert p.stat().st_mode & 0o777 == 0o600
    # The newest lines (log lines and printed lines alike) are in the current file.
    text = path.read_text()
    assert "printed 01999" in text and "line 01999" in text


TALK_MODULE = """
import logging

from starlette.requests import Request

import schooner as serve


@serve.deployment
class Talk:
    def __call__(self, request: Request) -> str:
        logging.getLogger("ray.serve").debug("talk debug line")
        logging.getLogger("ray.serve").info("talk info line")
        return "ok"


app = Talk.bind()
"""


def test_config_file_levels(tmp_path: Path) -> None:
    """A config document's top-level logging_config reaches the running controller and
    proxy and the applications without their own; an application's own beats it, and a
    deployments[] entry's beats the application's."""
    from detached import Detached

    (tmp_path / "talk.py").write_text(TALK_MODULE)
    inst = Detached(tmp_path)
    inst.start()
    try:
        inst.deploy(
            {
                "logging_config": {"encoding": "JSON"},
                "applications": [
                    {"name": "plain", "route_prefix": "/plain", "import_path": "talk:app"},
                    {
                        "name": "own",
                        "route_prefix": "/own",
                        "import_path": "talk:app",
                        "logging_config": {"encoding": "TEXT"},
                        "deployments": [{"name": "Talk", "logging_config": {"log_level": "DEBUG"}}],
                    },
                    {
                        "name": "app_level",
                        "route_prefix": "/app_level",
                        "import_path": "talk:app",
                        "logging_config": {"encoding": "TEXT", "enable_access_log": False},
                    },
                ],
            }
        )
        inst.wait_running("plain", "own", "app_level")
        for route in ("/plain", "/own", "/app_level"):
            assert inst.http.get(route).status_code == 200
        assert inst.info is not None
        logs = Path(inst.info["session"]) / "logs"

        def lines(app: str) -> list[str]:
            return [
                line
                for path in logs.glob(f"replica_{app}_Talk_*.log")
                for line in path.read_text().splitlines()
            ]

        wait_for(lambda: any("GET /app_level 200" in x for x in _read(logs / "proxy.log")))
        plain = wait_for(lambda: (found := lines("plain")) and "CALL" in found[-1] and found)
        assert all(json.loads(line)["application"] == "plain" for line in plain)
        own = "\n".join(wait_for(lambda: (found := lines("own")) and "CALL" in found[-1] and found))
        assert "talk debug line" in own and "replica own#Talk#" in own  # DEBUG, TEXT
        quiet = "\n".join(wait_for(lambda: (found := lines("app_level")) and found))
        assert "talk info line" in quiet and "replica app_level#Talk#" in quiet
        # The proxy took the document's config while running: its access lines are JSON.
        access = [x for x in _read(logs / "proxy.log") if "GET /app_level 200" in x]
        assert json.loads(access[-1])["status_code"] == 200
        controller = _read(logs / "controller.log")
        assert json.loads(controller[-1])["component_name"] == "controller"
        # app_level's access log is off: its next line comes after no access line.
        assert inst.http.get("/app_level").status_code == 200
        wait_for(lambda: sum("talk info line" in x for x in lines("app_level")) == 2)
        assert not any("CALL" in x for x in lines("app_level"))
    finally:
        inst.stop()


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
