"""Resolving import paths to applications (``module:app``, ``path/file.py:app``, builders)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from schooner.deployment import Application
from schooner.exceptions import ServeConfigError

#: What to do about a module that cannot be found, when importing for the command line.
CLI_IMPORT_HINT = "Run from the directory that contains it or pass --app-dir."


def import_attr(import_path: str, app_dir: str = ".", hint: str = CLI_IMPORT_HINT) -> Any:
    """Import ``module:attr``, ``module.attr`` or ``path/to/file.py:attr``.

    ``app_dir`` (default: the current directory) is put first on ``sys.path``;
    ``hint`` ends the message when the module is not found.
    """
    app_dir = os.path.abspath(app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    if ":" in import_path:
        module_part, _, attr = import_path.rpartition(":")
    elif "." in import_path:
        module_part, _, attr = import_path.rpartition(".")
    else:
        raise ServeConfigError(
            f"Import path {import_path!r} must look like 'module:attribute' (or "
            "'path/to/file.py:attribute'), naming an application or an application builder."
        )
    if module_part.endswith(".py"):
        path = os.path.abspath(module_part)
        if not os.path.exists(path):
            raise ServeConfigError(
                f"File {module_part!r} of import path {import_path!r} does not exist."
            )
        directory, filename = os.path.split(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        module_part = filename[: -len(".py")]
    try:
        module = importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        if exc.name and module_part.startswith(exc.name):
            raise ServeConfigError(
                f"Cannot import module {module_part!r} of import path {import_path!r}: "
                f"{exc}. {hint}"
            ) from exc
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ServeConfigError(
                f"Module {module_part!r} has no attribute {attr!r} (import path {import_path!r})."
            ) from None
    return target


def parse_kv_args(pairs: list[str]) -> dict[str, str]:
    """Parse ``key=value`` command-line arguments for an application builder."""
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ServeConfigError(
                f"Argument {pair!r} is not of the form key=value (application builder "
                "arguments are given as key=value)."
            )
        args[key] = value
    return args


def build_application(
    target: Any, args: dict[str, Any] | None = None, import_path: str = ""
) -> Application:
    """``target`` itself if it is an Application, else call it as a builder with ``args``.

    A builder takes one argument: a dict, or a pydantic model that the dict is
    validated into (when its parameter is annotated with one).
    """
    args = args or {}
    if isinstance(target, Application):
        if args:
            raise ServeConfigError(
                f"{import_path or 'The target'} is an application, not an application builder, "
                f"so it takes no arguments (got {sorted(args)})."
            )
        return target
    if not callable(target) or inspect.isclass(target):
        raise ServeConfigError(
            f"{import_path or 'The target'} must be an Application (`Deployment.bind(...)`) "
            f"or a function that builds one from an args dict, got {type(target).__name__}."
        )
    params = list(inspect.signature(target).parameters.values())
    arg: Any = args
    if params:
        annotation = params[0].annotation
        if isinstance(annotation, str):
            annotation = getattr(target, "__annotations__", {}).get(params[0].name, annotation)
            try:
                annotation = inspect.get_annotations(target, eval_str=True).get(
                    params[0].name, annotation
                )
            except Exception:
                annotation = dict
        from pydantic import BaseModel, ValidationError

        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            try:
                arg = annotation.model_validate(args)
            except ValidationError as exc:
                raise ServeConfigError(
                    f"Invalid arguments for application builder {import_path}: {exc}"
                ) from exc
        app = target(arg)
    else:
        app = target()
    if not isinstance(app, Application):
        raise ServeConfigError(
            f"Application builder {import_path or target!r} returned {type(app).__name__}; "
            "it must return an Application (`Deployment.bind(...)`)."
        )
    return app
