"""Suite-wide fixtures: an isolated TMPDIR, and a check that no process is left behind."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

_ROOT = Path(tempfile.mkdtemp(prefix="schooner-tests-"))
os.environ["TMPDIR"] = str(_ROOT)
tempfile.tempdir = None  # re-read TMPDIR


def schooner_processes(root: Path = _ROOT) -> list[tuple[int, str]]:
    """Live processes of ours: any python -m schooner.* whose session is under ``root``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.split(")")[-1].split()[0] == "Z":
            continue  # zombie: already exited, waiting to be reaped by its parent
        if "-m schooner." in cmdline and str(root) in cmdline:
            found.append((int(entry), cmdline))
    return found


def wait_until_no_processes(timeout_s: float = 10.0, root: Path = _ROOT) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = schooner_processes(root)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes() -> object:
    yield
    import schooner

    schooner.shutdown()
    left = wait_until_no_processes(15.0)
    assert not left, f"processes left behind after the test session: {left}"


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _ROOT
