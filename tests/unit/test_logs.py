"""Process logging: the TEXT and JSON formats, rotation, access lines, which logging
config applies where, and live reconfiguration (schooner.logs)."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from schooner import logs
from schooner.builder import apply_app_logging_config
from schooner.config import LoggingConfig
from schooner.logs.access import AccessBuffer, AccessLog
from schooner.logs.output import (
    ContextFilter,
    JSONFormatter,
    LogContext,
    LogFile,
    Tee,
    TextFormatter,
)
from schooner.logs.settings import (
    DEFAULT_BACKUP_COUNT,
    DEFAULT_MAX_BYTES,
    LOGGING_CONFIG_ENV,
    LogSettings,
    Rotation,
    effective_logging_config,
    log_file_path,
)

REPLICA = LogContext(
    component="replica",
    application="app",
    deployment="Model",
    replica="r1",
    component_id="r1",
    text_id="app#Model#r1",
)


class FakeRequest(NamedTuple):
    route: str = ""
    request_id: str = ""
    app_name: str = ""


def record(msg: str = "hello", level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("user", level, "/x/model.py", 12, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def tagged(rec: logging.LogRecord, request: FakeRequest | None = None) -> logging.LogRecord:
    ContextFilter(REPLICA, (lambda: request) if request else None).filter(rec)
    return rec


def wait_for(predicate: Any, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


# ---------------------------------------------------------------- formats


def test_text_line_keeps_the_format() -> None:
    rec = tagged(record(), FakeRequest("/m", "req-1", "app"))
    line = TextFormatter().format(rec)
    assert line.startswith("INFO ")
    assert line.endswith(" replica app#Model#r1 req=req-1 model.py:12 - hello")


def test_text_line_outside_a_request_and_extra_attrs() -> None:
    rec = tagged(record())
    line = TextFormatter(("name", "process")).format(rec)
    assert f" req=- model.py:12 name=user process={os.getpid()} - hello" in line


def test_json_line_has_rays_fields_and_the_context() -> None:
    rec = tagged(record(), FakeRequest("/m", "req-1", "app"))
    entry = json.loads(JSONFormatter().format(rec))
    assert entry["message"] == "hello" and entry["levelname"] == "INFO"
    assert entry["asctime"] and entry["timestamp_ns"] > 0
    assert entry["filename"] == "model.py" and entry["lineno"] == 12
    assert entry["component_name"] == "replica"
    assert (entry["application"], entry["deployment"], entry["replica"]) == ("app", "Model", "r1")
    assert (entry["request_id"], entry["route"]) == ("req-1", "/m")
    assert "request_text" not in entry and "component_text" not in entry


def test_json_line_takes_extra_and_additional_standard_attrs() -> None:
    rec = tagged(record(user_id=7))
    entry = json.loads(JSONFormatter(["name", "thread"]).format(rec))
    assert entry["user_id"] == 7 and entry["name"] == "user" and entry["thread"]
    assert entry["request_id"] == "" and entry["application"] == "app"  # replica's own app


def test_json_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        rec = tagged(record("failed", logging.ERROR, exc_info=sys.exc_info()))
    line = JSONFormatter().format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert "Traceback" in entry["exc_text"] and "ValueError: bad" in entry["exc_text"]


def test_json_line_with_unserializable_extra_still_parses() -> None:
    entry = json.loads(JSONFormatter().format(tagged(record(thing=object()))))
    assert entry["thing"].startswith("<object")


# ---------------------------------------------------------------- files and rotation


def test_log_file_is_private_and_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "replica_a_B_1.log"
    path.write_text("")
    path.chmod(0o644)
    logfile = LogFile(path, Rotation(max_bytes=1000, backup_count=2))
    for i in range(100):
        logfile.write(f"line {i:04d} " + "x" * 40 + "\n")
    logfile.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["replica_a_B_1.log", "replica_a_B_1.log.1", "replica_a_B_1.log.2"]
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert p.stat().st_size <= 1000
    assert path.read_text().splitlines()[-1].startswith("line 0099")


def test_zero_max_bytes_or_backups_never_rotates(tmp_path: Path) -> None:
    for rotation in (Rotation(0, 5), Rotation(100, 0)):
        path = tmp_path / f"f{rotation.max_bytes}.log"
        logfile = LogFile(path, rotation)
        for _ in range(50):
            logfile.write("x" * 20 + "\n")
        logfile.close()
        assert path.stat().st_size == 50 * 21
    assert not list(tmp_path.glob("*.log.1"))


def test_stdout_copies_rotate_with_the_file(tmp_path: Path) -> None:
    logfile = LogFile(tmp_path / "r.log", Rotation(max_bytes=500, backup_count=3))
    terminal = _Terminal()
    tee = Tee(terminal, logfile, "(r) ")  # type: ignore[arg-type]
    for i in range(60):
        tee.write(f"print {i}\n")
    logfile.close()
    assert (tmp_path / "r.log.1").exists()
    assert all(size <= 500 for size in (p.stat().st_size for p in tmp_path.iterdir()))
    assert terminal.text.splitlines()[0] == "(r) print 0"


def test_printed_lines_in_a_json_file_are_json(tmp_path: Path) -> None:
    from schooner.logs.output import FormattedSink, stream_line_formatter

    logfile = LogFile(tmp_path / "r.log", Rotation())
    terminal = _Terminal()
    wrap = stream_line_formatter("stdout", ContextFilter(REPLICA), JSONFormatter())
    tee = Tee(terminal, logfile, "(r) ", wrap)  # type: ignore[arg-type]
    tee.write("one\ntw")
    tee.write("o\nthree")
    tee.flush()  # the unfinished line too
    FormattedSink(tee).write('{"already": "formatted"}\n')
    logfile.close()
    entries = [json.loads(line) for line in _lines(tmp_path / "r.log")]
    assert [e.get("message") for e in entries] == ["one", "two", "three", None]
    assert entries[0]["stream"] == "stdout" and entries[0]["replica"] == "r1"
    assert terminal.text.startswith("(r) one\n(r) two\n(r) three")


def test_printed_lines_reach_the_terminal_whole(tmp_path: Path) -> None:
    # print() writes its arguments one by one; another process writing to the same
    # terminal between them would land inside the line. Each line goes out in one write.
    logfile = LogFile(tmp_path / "r.log", Rotation())
    terminal = _Terminal()
    tee = Tee(terminal, logfile, "(r) ")  # type: ignore[arg-type]
    print("GREETER-PRINT", "/x", file=tee)
    print("a\nb", "c", file=tee)
    assert terminal.writes == ["(r) GREETER-PRINT /x\n", "(r) a\n", "(r) b c\n"]
    print("progress ", end="", file=tee, flush=True)  # an unfinished line on flush
    print("done", file=tee)
    assert terminal.writes[3:] == ["(r) progress ", "done\n"]
    logfile.close()
    assert (tmp_path / "r.log").read_text() == "GREETER-PRINT /x\na\nb c\nprogress done\n"


class _Terminal:
    def __init__(self) -> None:
        self.text = ""
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.text += text
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_rotation_settings_from_the_environment() -> None:
    assert Rotation.from_env({}) == Rotation(DEFAULT_MAX_BYTES, DEFAULT_BACKUP_COUNT)
    assert DEFAULT_MAX_BYTES == 512 * 1024**2 and DEFAULT_BACKUP_COUNT == 5
    ray_only = {"RAY_ROTATION_MAX_BYTES": "100", "RAY_ROTATION_BACKUP_COUNT": "2"}
    assert Rotation.from_env(ray_only) == Rotation(100, 2)
    ours = {**ray_only, "SCHOONER_LOG_ROTATION_MAX_BYTES": "300"}
    assert Rotation.from_env(ours) == Rotation(300, 2)
    assert Rotation.from_env({"SCHOONER_LOG_ROTATION_BACKUP_COUNT": "many"}).backup_count == 5


# ---------------------------------------------------------------- which config applies


def test_the_first_level_that_sets_a_config_wins_whole() -> None:
    dep = {"log_level": "DEBUG"}
    app = LoggingConfig(encoding="JSON")
    inst = {"encoding": "JSON", "enable_access_log": False}
    assert effective_logging_config(dep, app, inst) == dep
    assert effective_logging_config(None, app, inst)["encoding"] == "JSON"
    assert effective_logging_config(None, app, inst)["enable_access_log"] is True  # not merged
    assert effective_logging_config(None, None, inst) == inst
    assert effective_logging_config() == {}
    assert LogSettings.from_config({}) == LogSettings()


def test_settings_from_a_config() -> None:
    settings = LogSettings.from_config(
        LoggingConfig(log_level=logging.WARNING, encoding="json").model_dump(mode="json")
    )
    assert settings.json and settings.level_no == logging.WARNING
    assert not settings.access_log_on  # access lines are INFO lines
    assert not LogSettings.from_config({"enable_access_log": False}).access_log_on
    assert LogSettings.from_config({"log_level": "DEBUG"}).access_log_on


def test_log_file_path_follows_logs_dir(tmp_path: Path) -> None:
    assert log_file_path(tmp_path, {}, "proxy") == tmp_path / "proxy.log"
    other = tmp_path / "elsewhere"
    assert log_file_path(tmp_path, {"logs_dir": str(other)}, "proxy") == other / "proxy.log"


def test_application_config_applies_to_deployments_that_set_none() -> None:
    import schooner as serve
    from schooner.deployment import build_app

    @serve.deployment(logging_config={"log_level": "DEBUG"})
    class Own:
        def __call__(self) -> str:
            return ""

    @serve.deployment
    class Ingress:
        def __init__(self, own: Any) -> None:
            self.own = own

    spec = build_app(Ingress.bind(Own.bind()), "app", "/")
    apply_app_logging_config(spec, LoggingConfig(encoding="JSON"))
    by_name = {d.name: d.config.logging_config for d in spec.deployments}
    assert by_name["Own"] is not None and by_name["Own"].log_level == "DEBUG"
    assert by_name["Own"].encoding == "TEXT"
    assert by_name["Ingress"] is not None and by_name["Ingress"].encoding == "JSON"


def test_config_document_top_level_applies_to_apps_without_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from schooner.controller.declarative import LOGGING_CONFIG_KEY, apply_instance_logging_config
    from schooner.controller.long_poll import LongPollHost
    from schooner.schema import parse_config_document

    monkeypatch.setenv(LOGGING_CONFIG_ENV, "{}")  # restored (removed) after the test
    doc = parse_config_document(
        {
            "logging_config": {"encoding": "JSON"},
            "applications": [
                {"name": "a", "route_prefix": "/a", "import_path": "m:a"},
                {
                    "name": "b",
                    "route_prefix": "/b",
                    "import_path": "m:b",
                    "logging_config": {"log_level": "DEBUG"},
                },
            ],
        }
    )

    class Controller:
        long_poll = LongPollHost()

    apply_instance_logging_config(Controller(), doc)  # type: ignore[arg-type]
    a, b = doc.applications
    assert a.logging_config is not None and a.logging_config.encoding == "JSON"
    assert b.logging_config is not None and b.logging_config.encoding == "TEXT"
    assert json.loads(os.environ[LOGGING_CONFIG_ENV])["encoding"] == "JSON"
    assert Controller.long_poll.get(LOGGING_CONFIG_KEY)[1]["encoding"] == "JSON"


# ---------------------------------------------------------------- access lines


class _Sink:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    @property
    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


@pytest.fixture
def access() -> Iterator[tuple[AccessBuffer, _Sink]]:
    buffer, sink = AccessBuffer(), _Sink()
    buffer.configure(sink, REPLICA, LogSettings())
    yield buffer, sink
    buffer.stop()


def _call(log: AccessLog, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "method": "GET",
        "route": "/m",
        "status": 200,
        "latency_ms": 1.234,
        "request_id": "req-1",
        "application": "app",
    }
    fields.update(overrides)
    log.record(**fields)


def test_record_only_queues_and_a_flush_writes_the_line(
    access: tuple[AccessBuffer, _Sink],
) -> None:
    buffer, sink = access
    log = AccessLog("proxy", buffer=buffer)
    _call(log)
    assert buffer.queued == 1 or sink.lines  # queued (or the thread already wrote it)
    buffer.flush()
    (line,) = sink.lines
    assert line.startswith("INFO ") and line.endswith(" req=req-1 access - GET /m 200 1.2ms")


def test_replica_lines_read_like_rays(access: tuple[AccessBuffer, _Sink]) -> None:
    buffer, sink = access
    _call(AccessLog("replica", buffer=buffer), method="predict", status="OK")
    buffer.flush()
    assert sink.lines[0].endswith(" replica app#Model#r1 req=req-1 access - CALL predict OK 1.2ms")


def test_json_access_lines(access: tuple[AccessBuffer, _Sink]) -> None:
    buffer, sink = access
    buffer.configure(sink, REPLICA, LogSettings(encoding="JSON"))
    _call(AccessLog("proxy", buffer=buffer), client="1.2.3.4:5")
    buffer.flush()
    entry = json.loads(sink.lines[0])
    assert entry["message"] == "GET /m 200 1.2ms"
    assert (entry["method"], entry["status_code"], entry["latency_ms"]) == ("GET", 200, 1.234)
    assert (entry["request_id"], entry["route"], entry["application"]) == ("req-1", "/m", "app")
    assert entry["component_name"] == "replica" and entry["client"] == "1.2.3.4:5"


def test_the_thread_flushes_within_the_interval(access: tuple[AccessBuffer, _Sink]) -> None:
    buffer, sink = access
    _call(AccessLog("proxy", buffer=buffer))
    wait_for(lambda: sink.lines)


def test_disabled_access_log_queues_nothing(access: tuple[AccessBuffer, _Sink]) -> None:
    buffer, sink = access
    _call(AccessLog("proxy", enabled=False, buffer=buffer))
    buffer.configure(sink, REPLICA, LogSettings(enable_access_log=False))
    follows_config = AccessLog("proxy", buffer=buffer)
    assert not follows_config.enabled
    _call(follows_config)
    buffer.configure(sink, REPLICA, LogSettings(log_level="WARNING"))
    _call(follows_config)
    assert not buffer.queued
    buffer.configure(sink, REPLICA, LogSettings())
    assert follows_config.enabled  # follows the process's config when it changes


def test_without_a_sink_nothing_is_recorded() -> None:
    log = AccessLog("proxy", enabled=True, buffer=AccessBuffer())
    assert not log.enabled
    _call(log)
    assert not log._buffer.queued


# ---------------------------------------------------------------- a whole process


@pytest.fixture
def process_logging() -> Iterator[None]:
    """Restore the root logger and this module's process state after a test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = logs._process
    named = {
        n: (logging.getLogger(n).propagate, logging.getLogger(n).level)
        for n in logs.USER_FACING_LOGGERS
    }
    yield
    logs.flush()
    if logs._process is not None and logs._process is not saved:
        logs._process.logfile.close()
    logs._process = saved
    logs.ACCESS.configure(None, LogContext(""), LogSettings())
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, (propagate, lvl) in named.items():
        logging.getLogger(name).propagate = propagate
        logging.getLogger(name).setLevel(lvl)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_user_loggers_reach_the_replica_file_with_its_context(
    tmp_path: Path, process_logging: None
) -> None:
    request = FakeRequest("/m", "req-9", "app")
    logging.getLogger("ray").propagate = False  # as Ray leaves it in its workers
    logging.getLogger("ray").setLevel(logging.INFO)  # as importing ray sets it
    path = logs.setup_process_logging(
        tmp_path,
        "replica_app_Model_r1",
        "replica",
        request_context=lambda: request,
        application="app",
        deployment="Model",
        replica_id="r1",
        config={"encoding": "JSON", "log_level": "DEBUG"},
    )
    for name in ("ray.serve", "schooner", "ray", "ray.serve.user"):
        logging.getLogger(name).debug("from %s", name)
    logs.AccessLog("replica").record(
        method="m", route="/m", status="OK", latency_ms=1, request_id="req-9"
    )
    logging.getLogger("user").warning("after the call")  # flushes the access line first
    entries = [json.loads(line) for line in _lines(path)]
    messages = [e["message"] for e in entries]
    assert messages == [
        "from ray.serve",
        "from schooner",
        "from ray",
        "from ray.serve.user",
        "CALL m OK 1.0ms",
        "after the call",
    ]
    for entry in entries:
        assert (entry["request_id"], entry["route"], entry["replica"]) == ("req-9", "/m", "r1")
        assert (entry["application"], entry["deployment"]) == ("app", "Model")
    assert any("from ray.serve" in line for line in logs.recent_lines())
    assert any("CALL m OK" in line for line in logs.recent_lines())


def test_live_reconfiguration(tmp_path: Path, process_logging: None) -> None:
    path = logs.setup_process_logging(tmp_path, "proxy", "proxy", config={})
    logging.getLogger("schooner").debug("hidden")
    logging.getLogger("schooner").info("text line")
    moved = tmp_path / "moved"
    new_path = logs.configure_process_logging(
        {"encoding": "JSON", "log_level": "DEBUG", "logs_dir": str(moved)}
    )
    assert new_path == moved / "proxy.log" == logs.current_log_file()
    logging.getLogger("schooner").debug("now shown")
    assert "hidden" not in path.read_text() and "text line" in path.read_text()
    entries = [json.loads(line) for line in _lines(moved / "proxy.log")]
    assert entries[-1]["message"] == "now shown" and entries[-1]["component_name"] == "proxy"
    assert stat.S_IMODE((moved / "proxy.log").stat().st_mode) == 0o600
    logs.configure_process_logging({"log_level": "WARNING"})
    assert not logs.AccessLog("proxy").enabled


def test_batched_text_access_lines_match_one_by_one_formatting() -> None:
    """The flush's fast path (seconds formatted once per second) writes exactly what the
    line-by-line formatter does."""
    import time as _time

    from schooner.logs.access import AccessBuffer
    from schooner.logs.output import LogContext

    buffer = AccessBuffer()
    buffer.context = LogContext("replica", component_id="x")
    start = _time.time()
    entries = [
        (
            start + i * 0.0007,
            i % 2 == 0,
            "GET" if i % 2 == 0 else "__call__",
            "/route",
            200 if i % 2 == 0 else "OK",
            1.2345 * i,
            f"rid{i}" if i % 3 else "",
            "app",
            "Model",
            "",
        )
        for i in range(3000)
    ]
    assert buffer._text_lines(entries) == [buffer._text_line(e) for e in entries]  # type: ignore[arg-type]
