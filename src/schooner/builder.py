"""Building an application from a config entry, in a process of its own.

``python -m schooner.builder --request FILE --result FILE``

The head never imports user code. To deploy an application from a config
document (``PUT /api/serve/applications/``, ``schooner deploy``, ``schooner
run config.yaml``) it starts this process, which sets up the application's
``runtime_env``, imports its ``import_path``, calls the builder with
``args``, applies the config's per-deployment overrides and writes the
resulting :class:`~schooner.rpc.messages.AppSpec`, or why it failed, to the
result file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schooner.exceptions import RayServeException, ServeConfigError
from schooner.rpc.messages import AppSpec, ProcessEnv

if TYPE_CHECKING:
    from schooner.runtime_env import ResolvedRuntimeEnv


@dataclass
class BuildRequest:
    """What to build: one validated application entry, as JSON data."""

    app: dict[str, Any]
    base_dir: str  # relative local paths in runtime_env are relative to this
    cache_dir: str  # where runtime_env downloads and pip installs are cached ("": default)
    restart_nonce: str = ""  # non-empty: every replica is replaced (``schooner run --reload``)


@dataclass
class BuildResult:
    spec: AppSpec | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def apply_overrides(spec: AppSpec, entries: list[Any]) -> None:
    """Apply a config's ``deployments:`` entries (config file > code > defaults)."""
    by_name = {d.name: d for d in spec.deployments}
    for entry in entries:
        dep = by_name.get(entry.name)
        if dep is None:
            raise ServeConfigError(
                f"The config overrides deployment '{entry.name}', but application "
                f"'{spec.name}' has no deployment of that name (it has: "
                f"{', '.join(sorted(by_name))}). Use the deployment's name: its class or "
                "function name, or the name given with @serve.deployment(name=...)."
            )
        dep.config = dep.config.merge(entry.overrides())


def apply_app_logging_config(spec: AppSpec, logging_config: Any) -> None:
    """The application's ``logging_config`` applies, whole, to its deployments that set
    none (in code or in the config's ``deployments:``), as in Ray."""
    if logging_config is None:
        return
    for dep in spec.deployments:
        if dep.config.logging_config is None:
            dep.config = dep.config.merge({"logging_config": logging_config})


def build_from_config(request: BuildRequest) -> AppSpec:
    """Set up the runtime_env, import and build the application, apply the overrides."""
    from schooner.deployment import build_app
    from schooner.importing import build_application, import_attr
    from schooner.runtime_env import default_cache_dir, resolve_runtime_env, validate_runtime_env
    from schooner.schema import ServeApplicationSchema

    config = ServeApplicationSchema.model_validate(request.app)
    cache_dir = Path(request.cache_dir) if request.cache_dir else default_cache_dir()
    base_dir = Path(request.base_dir)
    app_env = validate_runtime_env(config.runtime_env, f"application '{config.name}' runtime_env")
    resolved = resolve_runtime_env(app_env, cache_dir, base_dir=base_dir)
    resolved.apply_to_current_process()
    hint = (
        "Set the application's runtime_env.working_dir to the directory (or .zip) that "
        "contains it, or start the instance from that directory."
    )
    target = import_attr(config.import_path, resolved.cwd or request.base_dir, hint)
    application = build_application(target, config.args, config.import_path)
    spec = build_app(application, config.name, config.route_prefix, source="declarative")
    apply_overrides(spec, list(config.deployments))
    apply_app_logging_config(spec, config.logging_config)
    attach_process_envs(spec, app_env, resolved, cache_dir, base_dir)
    for dep in spec.deployments:
        if request.restart_nonce:
            dep.code_version += ":" + request.restart_nonce
    spec.external_scaler_enabled = config.external_scaler_enabled
    spec.autoscaling_policy = config.autoscaling_policy
    return spec


def attach_process_envs(
    spec: AppSpec,
    app_env: dict[str, Any],
    resolved_app_env: ResolvedRuntimeEnv,
    cache_dir: Path,
    base_dir: Path,
) -> None:
    """Give each deployment the environment its replicas run in: the application's
    runtime_env, with the deployment's ``ray_actor_options["runtime_env"]`` merged over it."""
    from schooner.runtime_env import merge_runtime_envs, resolve_runtime_env, validate_runtime_env

    for dep in spec.deployments:
        own = (dep.config.ray_actor_options or {}).get("runtime_env") or {}
        env = resolved_app_env
        if own:
            where = f"deployment '{dep.name}' ray_actor_options.runtime_env"
            merged = merge_runtime_envs(app_env, validate_runtime_env(own, where))
            env = resolve_runtime_env(merged, cache_dir, base_dir=base_dir)
        dep.process_env = ProcessEnv(
            env.cwd, tuple(env.sys_path), dict(env.env_vars), dict(env.ray_fields)
        )


def run_build(request: BuildRequest) -> BuildResult:
    name = request.app.get("name", "default")
    try:
        return BuildResult(spec=build_from_config(request))
    except (ServeConfigError, RayServeException) as exc:
        return BuildResult(error=f"Deploying app '{name}' failed: {exc}")
    except BaseException:
        return BuildResult(
            error=f"Deploying app '{name}' failed with exception:\n{traceback.format_exc()}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="schooner-builder")
    parser.add_argument("--request", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--lifeline-fd", type=int, default=-1)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.lifeline_fd >= 0:
        from schooner.runtime.lifeline import watch_parent

        watch_parent(args.lifeline_fd, lambda: os._exit(1))
    # Run as ``__main__``: use the importable module's classes, so the result unpickles.
    this = importlib.import_module("schooner.builder")
    with open(args.request, "rb") as f:
        request: BuildRequest = pickle.load(f)
    result = this.run_build(request)
    try:
        payload = pickle.dumps(result, protocol=5)
    except Exception as exc:  # e.g. an unpicklable default in a deployment's options
        payload = pickle.dumps(
            this.BuildResult(error=f"Deploying app '{request.app.get('name')}' failed: {exc!r}")
        )
    tmp = args.result + ".tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, args.result)
    sys.stdout.flush()
    os._exit(0)  # don't wait for threads the user's module may have started


if __name__ == "__main__":
    main()
