"""``schooner build``, ``deploy``, ``config`` and ``status``: config files and the admin API.

The schema and output modules are imported where used: ``schooner run`` uses
this module before it starts the instance and should not wait for them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from schooner.admin.client import AdminClient
from schooner.exceptions import ServeConfigError


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (or JSON) config file; errors say where the syntax is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ServeConfigError(f"Cannot read config file {path!r}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ServeConfigError(
            f"Config file {path!r} is not valid YAML{where}: {problem}."
        ) from None
    if not isinstance(data, dict):
        raise ServeConfigError(
            f"Config file {path!r} must hold a mapping with 'applications' (or a top-level "
            f"'import_path'), not {type(data).__name__}."
        )
    return data


def is_config_file(target: str) -> bool:
    return target.endswith((".yaml", ".yml", ".json")) or (
        os.path.isfile(target) and not target.endswith(".py") and ":" not in target
    )


def absolutize_local_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative local ``working_dir``/``py_modules`` paths absolute (the instance
    resolves paths relative to its own directory, not the caller's)."""

    def fix(env: Any) -> Any:
        if not isinstance(env, dict):
            return env
        env = dict(env)
        wd = env.get("working_dir")
        if isinstance(wd, str) and _is_relative_local(wd):
            env["working_dir"] = str((base / wd).resolve())
        mods = env.get("py_modules")
        if isinstance(mods, list):
            env["py_modules"] = [
                str((base / m).resolve()) if isinstance(m, str) and _is_relative_local(m) else m
                for m in mods
            ]
        return env

    doc = dict(doc)
    apps = doc.get("applications")
    if "import_path" in doc:
        if "runtime_env" in doc:
            doc["runtime_env"] = fix(doc["runtime_env"])
    elif isinstance(apps, list):
        doc["applications"] = [
            {**a, "runtime_env": fix(a["runtime_env"])}
            if isinstance(a, dict) and "runtime_env" in a
            else a
            for a in apps
        ]
    return doc


def _is_relative_local(path: str) -> bool:
    return "://" not in path and not os.path.isabs(path)


def config_from_target(target: str, kv_args: dict[str, str], base: Path) -> dict[str, Any]:
    """A config document from a config file, or from an import path (one application)."""
    if is_config_file(target):
        doc = load_config_file(target)
        if kv_args:
            apps = doc.get("applications") if "import_path" not in doc else None
            if apps is None:
                doc = {**doc, "args": {**(doc.get("args") or {}), **kv_args}}
            elif isinstance(apps, list) and len(apps) == 1 and isinstance(apps[0], dict):
                args = {**(apps[0].get("args") or {})}
                doc = {**doc, "applications": [{**apps[0], "args": args}]}
                doc["applications"][0]["args"].update(kv_args)
            else:
                raise ServeConfigError(
                    "key=value arguments apply to one application, but the config has "
                    f"{len(apps) if isinstance(apps, list) else 'no'} applications; put "
                    "them in each application's 'args:' instead."
                )
    else:
        app: dict[str, Any] = {"import_path": target}
        if kv_args:
            app["args"] = kv_args
        doc = {"applications": [app]}
    doc = absolutize_local_paths(doc, base)
    from schooner.schema import config_warnings, parse_config_document

    parse_config_document(doc)
    for line in config_warnings(doc):  # Ray ignores unknown keys; a typo should not pass quietly
        print(f"Warning: {line}", file=sys.stderr)
    return doc


def unapplied_http_options(doc: dict[str, Any], running: dict[str, Any]) -> str | None:
    """A warning if ``doc`` sets ``http_options`` that differ from those of the running
    instance (``running``: its details' ``http_options``): they take effect only when an
    instance starts, so deploying them changes nothing (as in Ray, where this warns too)."""
    from schooner.schema import parse_config_document

    parsed = parse_config_document(doc)
    if "http_options" not in parsed.model_fields_set:
        return None
    given = parsed.http_options.model_dump(mode="json", exclude_unset=True, exclude={"location"})
    differ = []
    for key, value in given.items():
        current = running.get(key)
        if key in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs") and value:
            value = os.path.abspath(os.path.expanduser(value))  # as an instance start does
        if key == "ssl_keyfile_password":  # the instance shows only whether it has one
            value, current = bool(value), bool(current)
        if value != current:
            differ.append(key)
    if not differ:
        return None
    return (
        f"http_options {', '.join(differ)} differ from the running instance's and are not "
        "applied: http_options take effect only when an instance starts. To apply them, "
        "stop the instance (`schooner shutdown`) and start it again with them."
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    from schooner.importing import parse_kv_args

    doc = config_from_target(args.config_or_import_path, parse_kv_args(args.args), Path.cwd())
    client = AdminClient(args.address)
    if {"http_options", "host", "port"} & doc.keys():
        warning = unapplied_http_options(doc, client.details().get("http_options") or {})
        if warning:
            print(f"Warning: {warning}", file=sys.stderr)
    client.put_config(doc)
    hint = f" -a {client.url}" if args.address else ""
    print(
        "Sent deploy request successfully.\n"
        f" * Use `schooner status{hint}` to check applications' statuses.\n"
        f" * Use `schooner config{hint}` to see the current config(s).",
        flush=True,
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from schooner.cli.output import config_documents, dump_yaml

    details = AdminClient(args.address).details()
    docs = config_documents(details, args.name)
    if not docs:
        if args.name:
            print(f"No config has been deployed for application '{args.name}'.")
        else:
            print("No config has been deployed.")
        return 0
    print("\n---\n\n".join(dump_yaml(d) for d in docs), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from schooner.cli.output import dump_yaml, status_document

    details = AdminClient(args.address).details(include=("traffic", "rollout"))
    print(dump_yaml(status_document(details, args.name)), end="")
    return 0


def _module_import_path(import_path: str) -> str:
    """``dir/fruit.py:app`` → ``fruit:app``: config files name modules, not files (put the
    directory in the application's ``runtime_env.working_dir``)."""
    module, sep, attr = import_path.rpartition(":")
    if sep and module.endswith(".py"):
        directory = Path(module).resolve().parent
        if directory != Path.cwd().resolve():
            print(
                f"Note: the config imports '{Path(module).stem}:{attr}'; deploy it from "
                f"{directory} or set the application's runtime_env.working_dir to it.",
                file=sys.stderr,
            )
        return f"{Path(module).stem}:{attr}"
    return import_path


def cmd_build(args: argparse.Namespace) -> int:
    from schooner.cli.output import build_document, dump_yaml
    from schooner.deployment import build_app
    from schooner.importing import build_application, import_attr

    built = []
    many = len(args.import_paths) > 1
    for index, import_path in enumerate(args.import_paths, start=1):
        target = import_attr(import_path, args.app_dir)
        app = build_application(target, {}, import_path)
        name = f"app{index}"
        route_prefix = f"/{name}" if many else "/"
        built.append((_module_import_path(import_path), build_app(app, name, route_prefix), None))
    text = dump_yaml(build_document(built))
    if args.output:
        Path(args.output).write_text(text)
        print(f"Wrote {args.output}.")
    else:
        print(text, end="")
    return 0
