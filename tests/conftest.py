"""Suite-wide fixtures: an isolated TMPDIR, and a check that no process is left behind.

Also the ``--backend`` option (which backend the ``both_backends`` integration
tests run on, see tests/integration/conftest.py) and the ``ray`` marker's
skip when Ray is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "integration"))
from helpers import wait_until_no_processes
from ray_cluster import ray_processes, wait_gone

_ROOT = Path(tempfile.mkdtemp(prefix="schooner-tests-"))
os.environ["TMPDIR"] = str(_ROOT)
tempfile.tempdir = None  # re-read TMPDIR
# Never attach to an instance someone left running on the default admin port; tests that
# want a running instance name its address. runtime_env caches stay inside the test root.
os.environ["SCHOONER_ADDRESS"] = "local"
os.environ["XDG_CACHE_HOME"] = str(_ROOT / "cache")


BACKENDS = ("embedded", "ray", "both")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=BACKENDS,
        default="both",
        help="runtime backend of the both_backends integration tests (default: both); "
        "with 'embedded' the tests that need the local Ray cluster are deselected",
    )


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


def _backend_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("backend", "embedded")) if callspec else "embedded"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("backend") == "embedded":
        dropped = [item for item in items if item.get_closest_marker("ray")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if not item.get_closest_marker("ray")]
    if importlib.util.find_spec("ray") is None:
        skip = pytest.mark.skip(reason="ray is not installed: pip install -e '.[ray]'")
        for item in items:
            if item.get_closest_marker("ray"):
                item.add_marker(skip)
    # Within a module, the Ray-backend runs of both_backends tests come last, so the
    # module starts one embedded instance and then one instance on the Ray cluster.
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(_module_of(item), len(first_seen))
    items.sort(key=lambda item: (first_seen[_module_of(item)], _backend_of(item) == "ray"))


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes() -> object:
    """After the session: no Schooner process and no Ray process of this session is left.

    Runs after every other session fixture's teardown (it is set up first), so the
    Ray cluster fixture has stopped its cluster by then; Ray's processes are only
    looked for here, never while the cluster is up."""
    yield
    import schooner

    schooner.shutdown()
    left = wait_until_no_processes(15.0, _ROOT)
    left += wait_gone({pid for pid, _ in ray_processes(_ROOT)}, 15.0)
    assert not left, f"processes left behind after the test session: {left}"


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _ROOT
