"""The :class:`CheckpointStore` contract, and the checks every store shares."""

from __future__ import annotations

import re
from typing import Final, Protocol

from schooner.exceptions import ServeConfigError

__all__ = [
    "REQUIRED_METHODS",
    "CheckpointStore",
    "check_key",
    "check_namespace",
    "check_value",
    "uri_error",
]

#: The methods an object must have to be used as a checkpoint store.
REQUIRED_METHODS: Final = ("get", "put", "delete", "keys", "close")

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class CheckpointStore(Protocol):
    """A small durable key-value store the controller checkpoints its goal state into.

    This is a public extension point: ``open_store("custom://pkg.mod.Class/arg")``
    loads any class that keeps this contract.

    - **Keys** are non-empty ``str`` of any characters (``/``, ``..``, ``:``, spaces,
      non-ASCII); a store must give back exactly the keys it was given. A store may
      raise ``ValueError`` for a key it cannot hold (the empty key, or one longer
      than its backend allows) and must do so before changing anything.
    - **Values** are ``bytes`` (possibly empty); anything else raises ``TypeError``.
    - **Namespaces**: a store is opened on one namespace; stores on the same
      location with different namespaces never see each other's keys.
    - **Durability**: once ``put`` or ``delete`` returns, a store opened later on the
      same location and namespace (in this process or another) sees the change.
    - **Errors**: ``get`` returns ``None`` only when the key is absent. A backend
      that cannot be reached or refuses raises its own error (``OSError``,
      ``redis.RedisError``, ``botocore`` errors, ...); it is never reported as a
      missing key or swallowed.
    - **Threads**: methods may be called from several threads at once.
    """

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or ``None`` if there is none."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any old value.

        Atomic: a concurrent or later reader sees the old value or the new one,
        never a mix; a ``put`` that fails (raises) leaves the old value in place.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``. Deleting a key that is not there is not an error."""
        ...

    def keys(self, prefix: str = "") -> list[str]:
        """The keys of this namespace that start with ``prefix``, sorted."""
        ...

    def close(self) -> None:
        """Release connections and files. The store is not used afterwards;
        closing twice is harmless."""
        ...


def check_key(key: str) -> None:
    """Raise ``TypeError``/``ValueError`` for a key no store accepts."""
    if not isinstance(key, str):
        raise TypeError(f"checkpoint keys are str, got {type(key).__name__}")
    if not key:
        raise ValueError("checkpoint keys must not be empty")


def check_value(value: bytes) -> None:
    """Raise ``TypeError`` unless ``value`` is ``bytes``."""
    if not isinstance(value, bytes):
        raise TypeError(f"checkpoint values are bytes, got {type(value).__name__}")


def check_namespace(namespace: str) -> None:
    """Namespaces are plain names, so ``a`` and ``a:b`` (or ``a/b``) can never overlap."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ServeConfigError(
            f"Checkpoint namespace {namespace!r} is not valid: it must start with a letter "
            "or digit and contain only letters, digits, '_', '.' and '-' (e.g. 'schooner')."
        )


def uri_error(uri: str, problem: str, example: str) -> ServeConfigError:
    """The error for a checkpoint store URI: which URI, what is wrong, a right one."""
    return ServeConfigError(
        f"Checkpoint store URI {uri!r}: {problem}. Example of a valid one: {example!r}."
    )
