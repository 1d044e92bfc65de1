"""``s3://bucket/prefix``: one S3 object per key, at ``<prefix>/<namespace>/<key>``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

from schooner.checkpoint.store import check_key, check_value, uri_error

__all__ = ["S3Store"]

EXAMPLE_URI = "s3://my-bucket/schooner/checkpoints"

#: S3's limit on an object key, in UTF-8 bytes.
_MAX_OBJECT_KEY_BYTES = 1024
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
#: Keys per ``ListObjectsV2`` page (S3's maximum).
LIST_PAGE_SIZE = 1000


class S3Store:
    """Objects in an S3 (or S3-compatible) bucket.

    Credentials, region and endpoint come from boto3's usual sources: the
    environment (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for MinIO, Ceph or a
    test server), ``~/.aws/config``, an instance role. ``put`` is a single
    ``PutObject``, which S3 applies atomically and reads back consistently.
    The bucket must exist; it is not created.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        namespace: str = "schooner",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self._client: Any = client if client is not None else boto3.client("s3")
        self._base = "/".join(p for p in (prefix.strip("/"), namespace) if p) + "/"

    @classmethod
    def from_uri(cls, uri: str, *, namespace: str) -> S3Store:
        """Open ``s3://bucket`` or ``s3://bucket/prefix``."""
        parts = urlsplit(uri)
        if not parts.netloc:
            raise uri_error(uri, "the bucket is missing", EXAMPLE_URI)
        if parts.query or parts.fragment:
            raise uri_error(uri, "an S3 URI takes no '?query' or '#fragment'", EXAMPLE_URI)
        return cls(parts.netloc, parts.path, namespace=namespace)

    def _object_key(self, key: str) -> str:
        check_key(key)
        name = self._base + key
        if len(name.encode()) > _MAX_OBJECT_KEY_BYTES:
            raise ValueError(
                f"checkpoint key {key[:40]!r}... is too long for S3 (object key "
                f"{len(name.encode())} bytes, at most {_MAX_OBJECT_KEY_BYTES})"
            )
        return name

    def get(self, key: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise
        body = response["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def put(self, key: str, value: bytes) -> None:
        name = self._object_key(key)
        check_value(value)
        self._client.put_object(Bucket=self.bucket, Key=name, Body=value)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def keys(self, prefix: str = "") -> list[str]:
        start = len(self._base)
        found: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._base + prefix,
            PaginationConfig={"PageSize": LIST_PAGE_SIZE},
        )
        for page in pages:
            found.extend(obj["Key"][start:] for obj in page.get("Contents", ()))
        return sorted(found)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, base={self._base!r})"
