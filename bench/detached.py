"""A detached Schooner instance (``schooner start``) in a temporary directory, driven
through the ``schooner`` command and the admin API: the setting of the live-update and
fault-injection scenarios."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.procs import free_port


class Detached:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.http_port = free_port()
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.env = {**os.environ, "SCHOONER_ADDRESS": self.admin}

    def cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "schooner.cli.main", *args],
            cwd=self.dir,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self.cli("start", "--http-port", str(self.http_port), "--admin-port", str(self.admin_port))

    def shutdown(self) -> None:
        self.cli("shutdown", "-y")

    def deploy(self, config: dict[str, Any]) -> None:
        (self.dir / "config.yaml").write_text(json.dumps(config))
        self.cli("deploy", "config.yaml")

    def instance(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin + "/api/schooner/instance", timeout=10) as r:
            info: dict[str, Any] = json.load(r)
        return info

    def applications(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin + "/api/serve/applications/", timeout=10) as r:
            apps: dict[str, Any] = json.load(r)["applications"]
        return apps

    def wait_running(self, *names: str, timeout_s: float = 120) -> float:
        """Wait until every one of ``names`` is RUNNING; returns how long it took."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            apps = self.applications()
            if all(apps.get(n, {}).get("status") == "RUNNING" for n in names):
                return time.perf_counter() - start
            time.sleep(0.05)
        raise RuntimeError(f"{names} did not become RUNNING")

    def replica_pids(self, app: str) -> list[int]:
        deps = self.applications().get(app, {}).get("deployments", {})
        return [
            replica["pid"]
            for dep in deps.values()
            for replica in dep["replicas"]
            if replica["state"] == "RUNNING"
        ]


@contextlib.contextmanager
def running_instance(prefix: str, files: dict[str, str]) -> Iterator[Detached]:
    """A started instance in a temporary directory holding ``files`` (name -> text);
    shut down afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        inst = Detached(Path(tmp))
        for name, text in files.items():
            (inst.dir / name).write_text(text)
        inst.start()
        try:
            yield inst
        finally:
            inst.shutdown()
