"""Integration fixtures: an instance per module on either backend, the session's Ray
cluster, and the checkpoint store servers.

Backends. A test that uses ``instance`` or ``clean`` runs on the embedded runtime.
Marked ``@pytest.mark.both_backends``, it runs twice, as ``test[embedded]`` and
``test[ray]`` (the latter also marked ``ray``); ``--backend=embedded|ray|both``
chooses (tests/conftest.py). Within a module the Ray runs come last (see
``pytest_collection_modifyitems`` there), so a module starts at most one instance
per backend. On Ray the instance is what a Ray Serve program gets:
``ray.init(address=cluster)`` then ``serve.start(...)``; ``serve.shutdown()`` and
``ray.shutdown()`` after, and then no Schooner actor may be left on the cluster.

Ray cluster. ``ray_cluster`` (session): a head (``{"head_node": 10}``) and two
worker nodes (``{"node_a": 10}``, ``{"node_b": 10}``), 2 CPUs each; see
ray_cluster.py. Tests that add or kill nodes add their own and leave the three
base nodes as they found them.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import free_port, wait_for
from ray_cluster import RAY_ENV, LocalRayCluster, ray_connect, ray_disconnect_and_check

import schooner as serve


@pytest.fixture(scope="session")
def ray_cluster(tmp_root: Path) -> Iterator[LocalRayCluster]:
    """A head and two worker nodes with distinct custom resources (module docstring)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed: pip install -e '.[ray]'")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in RAY_ENV.items():
            mp.setenv(name, value)
        cluster = LocalRayCluster(tmp_root, head_resources={"head_node": 10})
        try:
            cluster.add_worker({"node_a": 10})
            cluster.add_worker({"node_b": 10})
            yield cluster
        finally:
            left = cluster.shutdown()
        assert not left, f"Ray processes left running after the cluster's shutdown: {left}"


class Instance:
    def __init__(self, port: int, backend: str = "embedded") -> None:
        self.port = port
        self.backend = backend
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)


class _ModuleInstances:
    """The module's one running instance; switching backend stops it and starts the other."""

    def __init__(self) -> None:
        self.current: Instance | None = None

    def use(self, backend: str, request: pytest.FixtureRequest) -> Instance:
        if self.current is not None and self.current.backend == backend:
            return self.current
        self.stop()
        port = free_port()
        if backend == "ray":
            ray_connect(request.getfixturevalue("ray_cluster"))
            # One proxy, as one embedded instance has: the nodes of the test cluster share
            # this machine's address, so EveryNode proxies would split a test's requests
            # (and its queue limits) between them. EveryNode has tests of its own.
            serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        else:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        self.current = Instance(port, backend)
        return self.current

    def stop(self) -> None:
        inst, self.current = self.current, None
        if inst is None:
            return
        inst.http.close()
        if inst.backend == "ray":
            ray_disconnect_and_check()
        else:
            serve.shutdown()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``both_backends`` tests: one run per backend that ``--backend`` selects."""
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_backends") is None:
        return
    chosen = metafunc.config.getoption("backend")
    params = []
    if chosen in ("embedded", "both"):
        params.append(pytest.param("embedded", id="embedded"))
    if chosen in ("ray", "both"):
        params.append(pytest.param("ray", id="ray", marks=pytest.mark.ray))
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``embedded`` or ``ray``: the backend this run of the test uses."""
    return str(getattr(request, "param", "embedded"))


@pytest.fixture(scope="module")
def _module_instances() -> Iterator[_ModuleInstances]:
    instances = _ModuleInstances()
    yield instances
    instances.stop()


@pytest.fixture
def instance(
    backend: str, _module_instances: _ModuleInstances, request: pytest.FixtureRequest
) -> Instance:
    """One instance per test module and backend; applications are deleted after each test."""
    return _module_instances.use(backend, request)


@pytest.fixture
def clean(instance: Instance) -> Iterator[Instance]:
    yield instance
    for name in list(serve.status().applications):
        serve.delete(name)


# -- checkpoint store servers (redis-server from Debian, moto's S3 server) ---------------
BUCKET = "schooner-checkpoints"


def _start(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wait_ready(
    proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], object], what: str
) -> None:
    """Poll ``ready`` (a callable) until it succeeds; fail at once if the server exits."""

    def check() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        return bool(ready())

    try:
        wait_for(check, timeout_s=20, message=f"{what} to answer")
    except BaseException:
        _stop(proc)
        raise


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    proc = _start([*argv, "no", "--dir", str(workdir)], workdir / "redis.log")
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    _wait_ready(proc, workdir / "redis.log", client.ping, "redis-server")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        _stop(proc)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """moto's S3 server, with the AWS environment pointing at it and a bucket made."""
    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto is not installed (pip install 'moto[server]')")
    import boto3

    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = _start(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        workdir / "moto.log",
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(workdir / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-credentials"),
        }.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        client = boto3.client("s3")
        _wait_ready(proc, workdir / "moto.log", client.list_buckets, "moto_server")
        try:
            client.create_bucket(Bucket=BUCKET)
            yield
        finally:
            client.close()
            _stop(proc)
