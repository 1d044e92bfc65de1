"""Process ownership: `schooner run`, scripts with blocking=True, and SIGKILL of the owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from helpers import free_port, schooner_processes, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"


def _get(url: str) -> httpx.Response | None:
    """The response once the app answers 200 (None while starting up)."""
    try:
        r = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return r if r.status_code == 200 else None


def _post(url: str, **kwargs: object) -> httpx.Response | None:
    try:
        r = httpx.post(url, timeout=5, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError:
        return None
    return r if r.status_code == 200 else None


def _descendants_gone(owner_pid: int, timeout_s: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in schooner_processes() if _session_owner(p[1]) == owner_pid]
        if not left:
            return []
        time.sleep(0.05)
    return left


def _session_owner(cmdline: str) -> int | None:
    # session dirs are named session_<time>_<pid of the process that created it>
    for part in cmdline.split():
        if "session_" in part:
            try:
                return int(part.rstrip("/").rsplit("_", 1)[-1])
            except ValueError:
                return None
    return None


def test_schooner_run_serves_fruit_stand_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schooner.cli.main",
            "run",
            "fruit:app",
            "--port",
            str(port),
            "--app-dir",
            str(EXAMPLES),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        r = wait_for(
            lambda: _post(f"http://127.0.0.1:{port}/", json=["MANGO", 2]),
            timeout_s=60,
            message="fruit stand to answer",
        )
        assert r.status_code == 200 and r.json() == 6
        r = _post(f"http://127.0.0.1:{port}/", json=["PEAR", 2])
        assert r is not None and r.json() == 8
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out
    assert _descendants_gone(proc.pid, 10) == []


def test_schooner_run_file_path_builder_args_and_replica_output(tmp_path: Path) -> None:
    app_file = tmp_path / "greeter.py"
    app_file.write_text(
        textwrap.dedent("""
        import schooner as serve

        @serve.deployment
        class Greeter:
            def __init__(self, greeting):
                self.greeting = greeting

            def __call__(self, request):
                print("GREETER-PRINT", request.url.path, flush=True)
                return self.greeting

        def build(args):
            return Greeter.bind(args["greeting"])
    """)
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schooner.cli.main",
            "run",
            f"{app_file}:build",
            "greeting=ahoy",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path.parent,
    )
    try:
        r = wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/x"), timeout_s=60, message="greeter to answer"
        )
        assert r.text == "ahoy"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "GREETER-PRINT /x" in out
    assert "(ServeReplica:default:Greeter" in out


def test_sigkill_of_owner_stops_every_process_within_5s(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    port = free_port()
    script.write_text(
        textwrap.dedent(f"""
        import schooner as serve

        @serve.deployment(num_replicas=2)
        def f(request):
            return "up"

        serve.start(http_options={{"port": {port}}})
        serve.run(f.bind(), blocking=False, route_prefix="/")
        print("READY", flush=True)
        import time
        time.sleep(600)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        r = _get(f"http://127.0.0.1:{port}/")
        assert r is not None and r.text == "up"
        ours = [p for p in schooner_processes() if _session_owner(p[1]) == proc.pid]
        assert len(ours) == 5  # supervisor, head, proxy, two replicas
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        started = time.monotonic()
        left = _descendants_gone(proc.pid, 5.0)
        assert left == [], f"still running {time.monotonic() - started:.1f}s later: {left}"
        print(f"every process exited {time.monotonic() - started:.2f}s after SIGKILL")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_script_with_blocking_run_shuts_down_on_sigint(tmp_path: Path) -> None:
    script = tmp_path / "blocking.py"
    port = free_port()
    script.write_text(
        textwrap.dedent(f"""
        import signal
        import schooner as serve

        # Ctrl-C as in a terminal: a test run started in the background (`&`, nohup)
        # hands its children SIGINT ignored, and Python then leaves it ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        @serve.deployment
        class Main:
            def __call__(self, request):
                return "main-defined"

        serve.start(http_options={{"port": {port}}})
        serve.run(Main.bind(), blocking=True)
        print("EXITED-CLEANLY", flush=True)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        r = wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/"), timeout_s=60, message="script app to answer"
        )
        assert r.text == "main-defined"  # class from __main__ travelled by value
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "EXITED-CLEANLY" in out
    assert _descendants_gone(proc.pid, 10) == []
