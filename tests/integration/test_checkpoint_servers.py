"""The checkpoint store contract against real servers: redis-server and moto's S3 server.

Each server runs as a subprocess for the module, on a free port, and is stopped
afterwards. The tests are the ones of ``tests/unit/test_checkpoint.py``
(:class:`CheckpointContract`); only the location each test starts from differs.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from helpers import free_port
from test_checkpoint import CheckpointContract

from conftest import BUCKET
from schooner.checkpoint import open_store


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
