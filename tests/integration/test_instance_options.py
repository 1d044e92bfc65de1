"""serve.start()'s instance options take effect: no proxy when Disabled, HTTP timeouts,
the instance-wide logging config; and given again to a running instance, they are
reported as ignored."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, wait_for
from starlette.requests import Request

import schooner as serve
from schooner import api
from schooner.runtime.launcher import session_processes


@serve.deployment
class Echo:
    def __call__(self, request: Request) -> str:
        logging.getLogger("user").debug("echo called")  # shown: log_level is DEBUG
        return "echo"

    def hello(self) -> str:
        return "hello"


@serve.deployment
class Slow:
    def __call__(self, request: Request) -> str:
        time.sleep(2)
        return "late"


@pytest.fixture
def stopped() -> Iterator[None]:
    serve.shutdown()
    yield
    serve.shutdown()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_disabled_proxy_starts_no_proxy_and_handles_still_work(stopped: None) -> None:
    port = free_port()
    serve.start(proxy_location="Disabled", http_options={"port": port})
    assert api._head is not None
    session = str(api._head.session.root)
    assert session_processes(session, "schooner.proxy.main") == []
    handle = serve.run(Echo.bind(), name="e")
    assert handle.hello.remote().result() == "hello"
    assert not _listening(port)
    assert api.http_address() is None
    assert serve.status().applications["e"].status == "RUNNING"


def test_http_options_and_logging_config_apply(
    stopped: None, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    serve.start(
        proxy_location="HeadOnly",
        http_options={"port": port, "request_timeout_s": 0.5, "root_path": "/base"},
        logging_config={"encoding": "JSON", "log_level": "DEBUG"},
    )
    serve.run(Echo.bind(), name="e", route_prefix="/e")
    serve.run(Slow.bind(), name="s", route_prefix="/s")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        assert http.get("/base/e").text == "echo"
        assert http.get("/base/s").status_code == 408  # request_timeout_s
    assert api._head is not None
    logs = Path(api._head.session.logs)

    def json_replica_line() -> bool:
        for path in logs.glob("replica_e_Echo_*.log"):
            for line in path.read_text().splitlines():
                if "echo called" in line:
                    entry = json.loads(line)
                    return bool(entry["message"] == "echo called")
        return False

    wait_for(json_replica_line, message="a JSON log line from the replica")
    controller_lines = (logs / "controller.log").read_text().splitlines()
    assert controller_lines and all(json.loads(line) for line in controller_lines if line)

    with caplog.at_level(logging.WARNING, logger="schooner"):
        serve.start(proxy_location="Disabled", http_options={"port": port + 1})
    assert "already running" in caplog.text
    assert "proxy_location" in caplog.text and "'port'" in caplog.text


def test_instance_logs_dir_takes_every_file(stopped: None, tmp_path: Path) -> None:
    """serve.start(logging_config=) with logs_dir: the controller's, the proxy's and (as
    the fallback of deployments that set none) the replicas' files go there, in JSON."""
    port = free_port()
    logs_dir = tmp_path / "instance-logs"
    serve.start(
        proxy_location="HeadOnly",
        http_options={"port": port},
        logging_config={"encoding": "JSON", "logs_dir": str(logs_dir)},
    )
    serve.run(Echo.bind(), name="e", route_prefix="/e")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        assert http.get("/e").text == "echo"
    wait_for(lambda: list(logs_dir.glob("replica_e_Echo_*.log")), message="the replica's file")
    wait_for(
        lambda: "GET /e 200" in (logs_dir / "proxy.log").read_text(),
        message="the proxy's access line",
    )
    for name in ("controller.log", "proxy.log"):
        lines = (logs_dir / name).read_text().splitlines()
        assert lines and all(json.loads(line)["component_name"] for line in lines)
    details = api._controller_call("details")
    assert details["controller_info"]["log_file_path"] == str(logs_dir / "controller.log")
    (proxy,) = details["proxies"].values()
    assert proxy["log_file_path"] == str(logs_dir / "proxy.log")
    (replica,) = details["applications"]["e"]["deployments"]["Echo"]["replicas"]
    assert Path(replica["log_file_path"]).parent == logs_dir
