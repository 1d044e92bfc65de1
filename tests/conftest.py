"""Suite-wide fixtures: an isolated TMPDIR, and a check that no process is left behind."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "integration"))
from helpers import wait_until_no_processes

_ROOT = Path(tempfile.mkdtemp(prefix="schooner-tests-"))
os.environ["TMPDIR"] = str(_ROOT)
tempfile.tempdir = None  # re-read TMPDIR
# Never attach to an instance someone left running on the default admin port; tests that
# want a running instance name its address. runtime_env caches stay inside the test root.
os.environ["SCHOONER_ADDRESS"] = "local"
os.environ["XDG_CACHE_HOME"] = str(_ROOT / "cache")


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes() -> object:
    yield
    import schooner

    schooner.shutdown()
    left = wait_until_no_processes(15.0, _ROOT)
    assert not left, f"processes left behind after the test session: {left}"


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _ROOT
