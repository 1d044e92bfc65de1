"""``grpc_options.grpc_servicer_functions``: import paths of generated ``add_*Servicer_to_server``
functions, checked before an instance starts and loaded again by the proxy.

Each entry names a function that ``grpcio-tools`` generated into a ``*_pb2_grpc`` module
(``module.add_NameServicer_to_server`` or ``module:add_NameServicer_to_server``). The
module must be importable where the instance is started (the current directory and
``sys.path``), since the proxy imports it with the same path. Nothing here imports
``grpc`` unless servicer functions are given.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from schooner.exceptions import ServeConfigError

__all__ = [
    "FIELD",
    "SYS_PATH_ENV",
    "check_grpc_installed",
    "check_grpc_port",
    "import_like_the_starter",
    "load_servicer_functions",
    "starter_sys_path",
]

#: The import path of the process that started the instance, for the proxies (which may
#: run elsewhere: on a Ray cluster, in actors whose own path does not have it).
SYS_PATH_ENV = "SCHOONER_GRPC_SYS_PATH"

#: How the option is named in messages.
FIELD = "grpc_options.grpc_servicer_functions"

_HINT = (
    "Give the import path of a function that grpcio-tools generated, such as "
    "'my_service_pb2_grpc.add_MyServiceServicer_to_server', and start the instance from the "
    "directory that contains the module (or put it on PYTHONPATH)."
)


def starter_sys_path() -> str:
    """This process's ``sys.path`` (its current directory for ``""``), joined for
    :data:`SYS_PATH_ENV`."""
    return os.pathsep.join(entry or os.getcwd() for entry in sys.path)


def import_like_the_starter() -> None:
    """Append to ``sys.path`` what the starting process had and this one lacks
    (:data:`SYS_PATH_ENV`, and the head's ``SCHOONER_SYS_PATH``), in their order."""
    for name in (SYS_PATH_ENV, "SCHOONER_SYS_PATH"):
        for entry in os.environ.get(name, "").split(os.pathsep):
            if entry and entry not in sys.path:
                sys.path.append(entry)


def check_grpc_installed() -> None:
    """Raise ServeConfigError if ``grpcio`` (the ``schooner[grpc]`` extra) is missing."""
    try:
        importlib.import_module("grpc")
    except ImportError as exc:
        raise ServeConfigError(
            f"{FIELD} are set but grpcio is not installed ({exc}). Install Schooner's gRPC "
            "support with `pip install 'schooner[grpc]'`."
        ) from None


def _split(path: str) -> tuple[str, str]:
    if ":" in path:
        module, _, attr = path.rpartition(":")
    else:
        module, _, attr = path.rpartition(".")
    return module, attr


def load_servicer_function(path: str, index: int = 0) -> Callable[..., Any]:
    """Import one servicer function; ServeConfigError says which entry and what is wrong."""
    where = f"{FIELD}[{index}] ({path!r})"
    if not isinstance(path, str) or not path.strip():
        raise ServeConfigError(f"{where} is empty. {_HINT}")
    module_name, attr = _split(path.strip())
    if not module_name or not attr:
        raise ServeConfigError(f"{where} is not an import path ('module.function'). {_HINT}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServeConfigError(
            f"{where}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}. {_HINT}"
        ) from None
    except Exception as exc:  # the module itself raised while being imported
        raise ServeConfigError(
            f"{where}: importing module {module_name!r} raised {type(exc).__name__}: {exc}."
        ) from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ServeConfigError(f"{where}: module {module_name!r} has no {attr!r}. {_HINT}")
    if not callable(target):
        raise ServeConfigError(f"{where} names a {type(target).__name__}, not a function. {_HINT}")
    function: Callable[..., Any] = target
    return function


def load_servicer_functions(paths: Sequence[str]) -> list[Callable[..., Any]]:
    """Import every servicer function (after checking that grpcio is installed)."""
    if not paths:
        return []
    check_grpc_installed()
    return [load_servicer_function(path, i) for i, path in enumerate(paths)]


def check_grpc_port(host: str, port: int) -> None:
    """Raise (RayServeException naming ``grpc_options.port``) if ``host:port`` is taken."""
    from schooner.runtime.sockets import bind_listening

    bind_listening(host, port, what="gRPC", flag="grpc_options.port", backlog=1).close()
