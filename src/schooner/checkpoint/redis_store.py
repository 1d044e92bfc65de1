"""``redis://host:port/db``: one Redis string per key, named ``<namespace>:<key>``.

Named ``redis_store`` so that it does not shadow the ``redis`` package.
"""

from __future__ import annotations

import re
from typing import cast
from urllib.parse import urlsplit

import redis

from schooner.checkpoint.store import check_key, check_value, uri_error

__all__ = ["RedisStore"]

EXAMPLE_URI = "redis://127.0.0.1:6379/0"

#: Defaults for the connection; ``?socket_timeout=...`` in the URI overrides them.
_SOCKET_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5.0
_SCAN_BATCH = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisStore:
    """Keys live in one Redis database, as ``<namespace>:<key>`` strings.

    ``put`` is a single ``SET`` (atomic); ``keys`` walks the namespace with
    ``SCAN`` (never ``KEYS``, which blocks the server). Persistence is the
    server's: configure RDB/AOF on it for the durability the contract asks for.
    """

    def __init__(self, client: redis.Redis, *, namespace: str = "schooner") -> None:
        self._client = client
        self._prefix = f"{namespace}:"

    @classmethod
    def from_uri(cls, uri: str, *, namespace: str) -> RedisStore:
        """Open ``redis://[user:password@]host[:port][/db]`` (or ``rediss://`` for TLS)."""
        parts = urlsplit(uri)
        if not parts.hostname:
            raise uri_error(uri, "the host is missing", EXAMPLE_URI)
        try:
            _ = parts.port  # parsing it is the check
        except ValueError:
            raise uri_error(uri, "the port is not a number", EXAMPLE_URI) from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise uri_error(uri, f"the database {db!r} is not a number", EXAMPLE_URI)
        try:
            client = redis.Redis.from_url(
                uri, socket_timeout=_SOCKET_TIMEOUT_S, socket_connect_timeout=_CONNECT_TIMEOUT_S
            )
        except ValueError as exc:
            raise uri_error(uri, str(exc), EXAMPLE_URI) from exc
        return cls(client, namespace=namespace)

    def get(self, key: str) -> bytes | None:
        check_key(key)
        return cast("bytes | None", self._client.get(self._prefix + key))

    def put(self, key: str, value: bytes) -> None:
        check_key(key)
        check_value(value)
        self._client.set(self._prefix + key, value)

    def delete(self, key: str) -> None:
        check_key(key)
        self._client.delete(self._prefix + key)

    def keys(self, prefix: str = "") -> list[str]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._prefix + prefix) + "*"
        start = len(self._prefix)
        # SCAN may return a key more than once: collect into a set.
        found = {
            cast(bytes, name).decode()[start:]
            for name in self._client.scan_iter(match=pattern, count=_SCAN_BATCH)
        }
        return sorted(found)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self._client!r}, prefix={self._prefix!r})"
