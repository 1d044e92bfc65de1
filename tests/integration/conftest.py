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

import schooner as serve


class Instance:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    """One instance per test module; applications are deleted after each test."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    inst = Instance(port)
    yield inst
    inst.http.close()
    serve.shutdown()


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
