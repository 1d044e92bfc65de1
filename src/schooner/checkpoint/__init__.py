"""Checkpoint stores: where the controller keeps its goal state to recover it after a crash.

Open one by URI with :func:`open_store`; every store keeps the
:class:`CheckpointStore` contract (read it before writing your own)::

    store = open_store("file:///var/lib/schooner/checkpoints")
    store.put("apps/default", payload)
    store.get("apps/default")  # -> payload

URIs:

- ``file:///abs/dir`` or ``/abs/dir``: :class:`FileStore`, a file per key.
- ``redis://host:port/db`` (``rediss://`` for TLS): ``redis_store.RedisStore``.
- ``s3://bucket/prefix``: ``s3.S3Store`` (endpoint from ``AWS_ENDPOINT_URL_S3``).
- ``custom://pkg.module.Class/argument``: ``Class(argument, namespace=...)``.

Redis and S3 need ``pip install 'schooner[checkpoint]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from urllib.parse import urlsplit

from schooner.checkpoint.custom import open_custom_store
from schooner.checkpoint.file import FileStore
from schooner.checkpoint.store import CheckpointStore, check_namespace, uri_error
from schooner.exceptions import ServeConfigError

__all__ = ["CheckpointStore", "FileStore", "open_store"]

_EXAMPLES = "file:///var/lib/schooner/checkpoints, redis://127.0.0.1:6379/0 or s3://bucket/prefix"


def open_store(uri: str, *, namespace: str = "schooner") -> CheckpointStore:
    """Open the checkpoint store ``uri`` names, on ``namespace``.

    ``namespace`` (letters, digits, ``_``, ``.``, ``-``) separates the keys of
    several users of one location. Raises :class:`~schooner.exceptions.ServeConfigError`
    for a URI that is malformed, has an unknown scheme, or needs a package that
    is not installed. Redis and S3 are not contacted here: an unreachable server
    shows up as an error of the first call.
    """
    check_namespace(namespace)
    scheme = urlsplit(uri).scheme if "://" in uri else ""
    if uri.startswith("/") or scheme == "file":
        return FileStore.from_uri(uri, namespace=namespace)
    if scheme == "custom":
        return open_custom_store(uri, namespace=namespace)
    if scheme in ("redis", "rediss"):
        redis_store = _import_backend(uri, "schooner.checkpoint.redis_store", ("redis",))
        store: CheckpointStore = redis_store.RedisStore.from_uri(uri, namespace=namespace)
        return store
    if scheme == "s3":
        s3 = _import_backend(uri, "schooner.checkpoint.s3", ("boto3", "botocore"))
        store = s3.S3Store.from_uri(uri, namespace=namespace)
        return store
    problem = f"unknown scheme {scheme!r}" if scheme else "neither a URI nor an absolute path"
    raise uri_error(uri, f"{problem} (known: file, redis, rediss, s3, custom)", _EXAMPLES)


def _import_backend(uri: str, module: str, packages: tuple[str, ...]) -> ModuleType:
    """Import a store module whose backend package is an optional dependency."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in packages:
            raise
        raise ServeConfigError(
            f"Checkpoint store URI {uri!r} needs the {exc.name.partition('.')[0]!r} package, "
            "which is not installed: pip install 'schooner[checkpoint]'"
        ) from exc
