"""``custom://package.module.ClassName/argument``: a store class of your own."""

from __future__ import annotations

import importlib
from typing import cast

from schooner.checkpoint.store import REQUIRED_METHODS, CheckpointStore, uri_error

__all__ = ["open_custom_store"]

EXAMPLE_URI = "custom://my_package.stores.EtcdStore/etcd.internal:2379"
SCHEME_PREFIX = "custom://"


def open_custom_store(uri: str, *, namespace: str) -> CheckpointStore:
    """Import the class, call ``ClassName(argument, namespace=namespace)``, check the result.

    ``argument`` is everything after the first ``/`` that follows the class path,
    as written (possibly empty). The object made must have the methods of
    :class:`~schooner.checkpoint.CheckpointStore`; keeping their contract is up to it.
    """
    class_path, _, argument = uri.removeprefix(SCHEME_PREFIX).partition("/")
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name or not class_name:
        raise uri_error(
            uri,
            f"{class_path!r} is not a class path: name it as 'package.module.ClassName'",
            EXAMPLE_URI,
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not exc.name or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module exists but fails importing something else: its bug
        raise uri_error(uri, f"cannot import module {module_name!r} ({exc})", EXAMPLE_URI) from exc
    factory = getattr(module, class_name, None)
    if not callable(factory):
        problem = (
            f"module {module_name!r} has no attribute {class_name!r}"
            if factory is None
            else f"{class_path} is a {type(factory).__name__}, not a class"
        )
        raise uri_error(uri, problem, EXAMPLE_URI)
    store = factory(argument, namespace=namespace)
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(store, name, None))]
    if missing:
        raise uri_error(
            uri,
            f"{class_path} is not a checkpoint store: it lacks {', '.join(missing)} "
            f"(a store has {', '.join(REQUIRED_METHODS)}; see schooner.checkpoint.CheckpointStore)",
            EXAMPLE_URI,
        )
    return cast(CheckpointStore, store)
