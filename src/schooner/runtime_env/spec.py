"""The ``runtime_env`` document: which fields exist, how they are checked, how two combine.

Validation is pure (no file system, no network): it checks types and URL
forms and returns a normalized plain dict. Whether a path exists is checked
when the environment is resolved, because relative paths depend on the
directory the application is deployed from.
"""

from __future__ import annotations

import copy
import os
import types
from collections.abc import Callable, Mapping
from typing import Any

from schooner.exceptions import RuntimeEnvSetupError
from schooner.runtime_env.archive import is_archive_url, url_scheme

SUPPORTED_FIELDS = ("working_dir", "py_modules", "env_vars", "pip", "excludes", "config")

_ENV_HINT = (
    "Schooner sets up Python packages with 'pip' and environment variables with 'env_vars'; "
    "prepare anything else before starting Schooner."
)

#: Fields Ray accepts that Schooner does not, with a hint specific to each.
_UNSUPPORTED_RAY_FIELDS = {
    "conda": "List the environment's Python packages under 'pip' instead.",
    "uv": "List the same requirements under 'pip'.",
    "container": "Run Schooner inside the image instead.",
    "image_uri": "Run Schooner inside the image instead.",
    "docker": "Run Schooner inside the image instead.",
    "py_executable": "Start Schooner with the interpreter you want.",
    "java_jars": "Schooner runs Python code only.",
    "worker_process_setup_hook": "Do the setup in the deployment's constructor.",
    "nsight": "Run the profiler around the Schooner process instead.",
    "_nsight": "Run the profiler around the Schooner process instead.",
    "rocprof_sys": "Run the profiler around the Schooner process instead.",
    "mpi": "",
    "_ray_release": "",
    "_ray_commit": "",
    "_inject_current_ray": "",
}

_PIP_KEYS = ("packages", "pip_check", "pip_version")

#: On a Ray cluster these fields go to Ray as they are: Ray builds the environment on each
#: node. The head of an instance there (and its builder processes) has
#: ``SCHOONER_BACKEND=ray`` in its environment; a driver attached to one says so with
#: :func:`use_ray_backend`.
RAY_BACKEND_FIELDS = ("conda", "uv", "container", "image_uri")
BACKEND_ENV = "SCHOONER_BACKEND"
_ray_backend: bool | None = None


def use_ray_backend(on: bool | None) -> None:
    """This process deploys to an instance on a Ray cluster (True), or not (False/None:
    as ``SCHOONER_BACKEND`` says)."""
    global _ray_backend
    _ray_backend = on


def _on_ray() -> bool:
    if _ray_backend is not None:
        return _ray_backend
    return os.environ.get(BACKEND_ENV) == "ray"


def validate_runtime_env(
    env: Mapping[str, Any] | None, where: str = "runtime_env"
) -> dict[str, Any]:
    """Check a ``runtime_env`` and return it as a normalized plain dict.

    Fields set to ``None`` are dropped (as Ray does). ``pip`` is normalized to
    ``{"packages": list[str] | str, "pip_check": bool}`` (plus ``pip_version``
    if given); path-like values become strings; a module object in
    ``py_modules`` becomes the path of its directory (package) or file.
    Validating the result again returns it unchanged.

    Raises :class:`~schooner.exceptions.RuntimeEnvSetupError` whose message
    starts with the field (``where`` + ``.field``), says what is wrong and
    what to do.
    """
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise RuntimeEnvSetupError(
            f"{where} must be a mapping of runtime_env fields, got {type(env).__name__} "
            f"{env!r}. Supported fields: {', '.join(SUPPORTED_FIELDS)}."
        )
    result: dict[str, Any] = {}
    for key, value in env.items():
        if not isinstance(key, str):
            raise RuntimeEnvSetupError(
                f"{where}: field names must be strings, got {key!r}. "
                f"Supported fields: {', '.join(SUPPORTED_FIELDS)}."
            )
        field = f"{where}.{key}"
        if key in RAY_BACKEND_FIELDS and _on_ray():
            if value is not None:
                result[key] = value  # Ray checks it when it starts the replica actor
            continue
        if key in _UNSUPPORTED_RAY_FIELDS:
            hint = _UNSUPPORTED_RAY_FIELDS[key]
            raise RuntimeEnvSetupError(
                f"{field}: Schooner does not support the runtime_env field {key!r}. "
                + (f"{hint} " if hint else "")
                + _ENV_HINT
            )
        if key not in SUPPORTED_FIELDS:
            raise RuntimeEnvSetupError(
                f"{field}: unknown runtime_env field {key!r}. "
                f"Supported fields: {', '.join(SUPPORTED_FIELDS)}."
            )
        if value is None:
            continue
        result[key] = _CHECKS[key](value, field)
    return result


def merge_runtime_envs(
    parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Combine an application's ``runtime_env`` (parent) with a deployment's (child).

    As Ray: each top-level field the child sets replaces the parent's, except
    ``env_vars``, which are merged name by name (the child's value wins). The
    inputs are not modified; the result shares no mutable values with them.
    """
    result = copy.deepcopy(dict(parent or {}))
    child = copy.deepcopy(dict(child or {}))
    env_vars = {**(result.get("env_vars") or {}), **(child.pop("env_vars", None) or {})}
    result.update(child)
    if env_vars:
        result["env_vars"] = env_vars
    return result


# -- one check per field ------------------------------------------------------------------------


def _check_env_vars(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise RuntimeEnvSetupError(
            f"{field} must be a mapping of variable names to string values, "
            f"got {type(value).__name__} {value!r}."
        )
    result: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise RuntimeEnvSetupError(
                f"{field}: variable names must be non-empty strings, got {name!r}."
            )
        if not isinstance(item, str):
            raise RuntimeEnvSetupError(
                f"{field}.{name} must be a string, got {type(item).__name__} {item!r}. "
                f'Quote it (in YAML: {name}: "{item}") or convert it with str().'
            )
        result[name] = item
    return result


def _check_working_dir(value: Any, field: str) -> str:
    path = _path_string(value, field, "a local directory or the URL of a .zip file")
    scheme = url_scheme(path)
    if scheme == "local":
        if not path[len("local://") :]:
            raise RuntimeEnvSetupError(f"{field}: 'local://' must be followed by a directory.")
    elif scheme is not None and not is_archive_url(path, (".zip",)):
        raise RuntimeEnvSetupError(
            f"{field}: unsupported URL {path!r}. Schooner fetches working_dir from a local "
            "directory, 'local://<dir>', or a .zip file at a file:// or http(s):// URL. "
            "Download the archive yourself or serve it over https."
        )
    return path


def _check_py_modules(value: Any, field: str) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise RuntimeEnvSetupError(
            f"{field} must be a list of local directories, .py or .whl files, or "
            f"URLs of .zip/.whl files, got {type(value).__name__} {value!r}. "
            f"Write a single module as a one-element list: [{value!r}]."
        )
    result: list[str] = []
    for index, item in enumerate(value):
        entry_field = f"{field}[{index}]"
        if isinstance(item, types.ModuleType):
            item = _module_path(item, entry_field)
        path = _path_string(item, entry_field, "a local path, a URL or a module object")
        scheme = url_scheme(path)
        if scheme is not None and not is_archive_url(path, (".zip", ".whl")):
            raise RuntimeEnvSetupError(
                f"{entry_field}: unsupported URL {path!r}. A py_modules entry is a local "
                "directory, a .py or .whl file, or a .zip/.whl file at a file:// or "
                "http(s):// URL."
            )
        result.append(path)
    return result


def _check_pip(value: Any, field: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in _PIP_KEYS)
        if unknown:
            raise RuntimeEnvSetupError(
                f"{field}: unknown key(s) {', '.join(map(repr, unknown))}. "
                f"Allowed keys: {', '.join(_PIP_KEYS)}."
            )
        if "packages" not in value:
            raise RuntimeEnvSetupError(
                f"{field}: 'packages' is required (a list of requirements or the path "
                "of a requirements.txt file)."
            )
        result: dict[str, Any] = {"packages": _pip_packages(value["packages"], f"{field}.packages")}
        pip_check = value.get("pip_check", False)
        if not isinstance(pip_check, bool):
            raise RuntimeEnvSetupError(
                f"{field}.pip_check must be true or false, got {pip_check!r}."
            )
        result["pip_check"] = pip_check
        if value.get("pip_version") is not None:
            if not isinstance(value["pip_version"], str):
                raise RuntimeEnvSetupError(
                    f"{field}.pip_version must be a version specifier string such as "
                    f"'==24.0', got {value['pip_version']!r}."
                )
            result["pip_version"] = value["pip_version"]
        return result
    return {"packages": _pip_packages(value, field), "pip_check": False}


def _pip_packages(value: Any, field: str) -> list[str] | str:
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if not isinstance(path, str) or not path.strip():
            raise RuntimeEnvSetupError(
                f"{field}: the path of a requirements.txt file must not be empty."
            )
        return path
    if not isinstance(value, list | tuple):
        raise RuntimeEnvSetupError(
            f"{field} must be a list of requirement strings (e.g. ['requests==2.31']) or the "
            f"path of a requirements.txt file, got {type(value).__name__} {value!r}."
        )
    lines: list[str] = []
    for index, line in enumerate(value):
        if not isinstance(line, str) or not line.strip():
            raise RuntimeEnvSetupError(
                f"{field}[{index}] must be a non-empty requirement string "
                f"(e.g. 'requests==2.31'), got {line!r}."
            )
        lines.append(line.strip())
    return lines


def _check_excludes(value: Any, field: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise RuntimeEnvSetupError(
            f"{field} must be a list of gitignore-style patterns, got "
            f"{type(value).__name__} {value!r}."
        )
    for index, pattern in enumerate(value):
        if not isinstance(pattern, str):
            raise RuntimeEnvSetupError(
                f"{field}[{index}] must be a string pattern, got {pattern!r}."
            )
    return list(value)


def _check_config(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RuntimeEnvSetupError(
            f"{field} must be a mapping (Ray's RuntimeEnvConfig, e.g. "
            f"{{'setup_timeout_seconds': 600}}), got {type(value).__name__} {value!r}."
        )
    return dict(value)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "working_dir": _check_working_dir,
    "py_modules": _check_py_modules,
    "env_vars": _check_env_vars,
    "pip": _check_pip,
    "excludes": _check_excludes,
    "config": _check_config,
}


def _path_string(value: Any, field: str, expected: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise RuntimeEnvSetupError(
            f"{field} must be a string ({expected}), got {type(value).__name__} {value!r}."
        )
    if not value.strip():
        raise RuntimeEnvSetupError(f"{field} must not be empty; give {expected}.")
    return value


def _module_path(module: types.ModuleType, field: str) -> str:
    locations = getattr(module, "__path__", None)
    if locations:
        return str(next(iter(locations)))
    file = getattr(module, "__file__", None)
    if not file:
        raise RuntimeEnvSetupError(
            f"{field}: module {module.__name__!r} has no file on disk; give the path of "
            "its directory or file instead."
        )
    return str(file)
