"""What machine and software a run measured: stored with every result file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.load import wrk_path

PACKAGES = ("schooner", "uvicorn", "httptools", "uvloop", "starlette", "numpy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ray_info(ray_python: str) -> dict[str, Any]:
    """Python and package versions of the interpreter that runs Ray Serve."""
    code = (
        "import json, platform; from importlib import metadata as m\n"
        "import ray.serve\n"
        "v = {}\n"
        "for n in ('ray', 'schooner', 'numpy', 'uvicorn', 'starlette'):\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: v[n] = None\n"
        "print(json.dumps({'python': platform.python_version(), 'packages': v}))\n"
    )
    done = subprocess.run([ray_python, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(lines[-1])
    info: dict[str, Any] = json.loads(done.stdout)
    info["executable"] = ray_python
    return info


def machine_info(repo: Path) -> dict[str, Any]:
    wrk = wrk_path()
    wrk_version = None
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
        wrk_version = (done.stdout or done.stderr).splitlines()[0].strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "load_average_at_start": os.getloadavg(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": _versions(PACKAGES),
        "wrk": wrk_version,
        "git_commit": _git(repo, "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--", "src")),
    }
