"""The checkpoint store contract against real servers: redis-server and moto's S3 server.

Each server runs as a subprocess for the module, on a free port, and is stopped
afterwards. The tests are the ones of ``tests/unit/test_checkpoint.py``
(:class:`CheckpointContract`); only the location each test starts from differs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from helpers import free_port, wait_for
from test_checkpoint import CheckpointContract

from schooner.checkpoint import open_store

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


class TestRedisStore(CheckpointContract):
    @pytest.fixture
    def store_uri(self, redis_url: str) -> Iterator[str]:
        import redis

        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        yield redis_url
        client.close()

    def test_uses_scan_not_keys(self, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
        import redis

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("KEYS blocks the server; use SCAN")

        monkeypatch.setattr(redis.Redis, "keys", forbidden)
        store = open_store(store_uri)
        for i in range(2500):  # several SCAN batches
            store.put(f"k{i:05}", b"v")
        assert store.keys() == [f"k{i:05}" for i in range(2500)]
        store.close()

    def test_keys_are_prefixed_with_the_namespace(self, store_uri: str) -> None:
        import redis

        store = open_store(store_uri, namespace="ns")
        store.put("apps/x", b"v")
        store.close()
        client = redis.Redis.from_url(store_uri)
        assert client.keys("*") == [b"ns:apps/x"]
        client.close()

    def test_unreachable_server_is_an_error_not_a_missing_key(self) -> None:
        import redis

        store = open_store(f"redis://127.0.0.1:{free_port()}/0")
        with pytest.raises(redis.ConnectionError):
            store.get("k")
        store.close()


class TestS3Store(CheckpointContract):
    @pytest.fixture
    def store_uri(self, s3_server: None) -> str:
        return f"s3://{BUCKET}/run-{uuid.uuid4().hex}/checkpoints"

    def test_object_layout_and_pagination(
        self, store_uri: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import boto3

        from schooner.checkpoint import s3

        monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 4)  # 11 keys: three pages
        store = open_store(store_uri, namespace="ns")
        for i in reversed(range(11)):
            store.put(f"k{i:04}", b"")
        store.put("l", b"")
        assert store.keys() == [f"k{i:04}" for i in range(11)] + ["l"]
        assert store.keys("k") == [f"k{i:04}" for i in range(11)]
        store.close()
        prefix = store_uri.removeprefix(f"s3://{BUCKET}/")
        client = boto3.client("s3")
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1)
        assert listed["Contents"][0]["Key"] == f"{prefix}/ns/k0000"
        client.close()

    def test_endpoint_from_aws_endpoint_url_s3(
        self, store_uri: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # would fail
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        store = open_store(store_uri)
        store.put("k", b"v")
        assert store.get("k") == b"v"
        store.close()

    def test_missing_bucket_is_an_error_not_a_missing_key(self, s3_server: None) -> None:
        from botocore.exceptions import ClientError

        store = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
        with pytest.raises(ClientError, match="NoSuchBucket"):
            store.get("k")
        store.close()
