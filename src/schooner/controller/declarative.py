"""Config documents applied declaratively (REST ``PUT``, ``schooner deploy``, ``run config.yaml``).

The instance converges to the latest document: applications in it are
built (in a builder process, see :mod:`schooner.builder`) and deployed;
declarative applications missing from it are deleted; applications deployed
imperatively (``serve.run``) are left alone. Applying the same document
twice changes nothing, so operators may re-send it at will.

Everything is validated before anything changes: a bad document leaves what
runs untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schooner.builder import BuildRequest, BuildResult
from schooner.controller.traffic_config import apply_document_traffic, check_document_traffic
from schooner.exceptions import ServeConfigError
from schooner.logs import LOGGING_CONFIG_ENV, configure_process_logging, instance_logging_config
from schooner.rpc.messages import AppSpec
from schooner.runtime.launcher import ProcessHandle, ProcessSpec

if TYPE_CHECKING:
    from schooner.controller.controller import Controller
    from schooner.schema import ServeApplicationSchema, ServeDeploySchema

logger = logging.getLogger("schooner.controller")

#: How often a running build is checked for completion.
_BUILD_POLL_S = 0.02

#: Long-poll key of the instance-wide logging config (proxies apply it when it changes).
LOGGING_CONFIG_KEY = "logging_config"


def apply_instance_logging_config(controller: Controller, doc: ServeDeploySchema) -> None:
    """A document's top-level ``logging_config`` (as in Ray): it becomes the logging config
    of its applications that set none, and the instance's: the controller applies it at
    once, proxies when the long poll brings it, processes started later inherit it."""
    if doc.logging_config is None:
        return
    for app in doc.applications:
        if app.logging_config is None:
            app.logging_config = doc.logging_config
    config = doc.logging_config.model_dump(mode="json")
    if instance_logging_config() != config:
        os.environ[LOGGING_CONFIG_ENV] = json.dumps(config)
        configure_process_logging(config)
    controller.long_poll.publish(LOGGING_CONFIG_KEY, config)


def _fingerprint(spec: AppSpec) -> list[Any]:
    """What decides whether a rebuilt application differs from the running one."""
    return [
        spec.route_prefix,
        spec.ingress,
        spec.external_scaler_enabled,
        spec.autoscaling_policy,
        sorted(
            (d.name, d.code_version, d.process_env, d.config.model_dump_json())
            for d in spec.deployments
        ),
    ]


def _without_traffic(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A config entry without its ``traffic`` section: a change of weights alone is not a
    change of the application (nothing is rebuilt or redeployed for it)."""
    if entry is None:
        return None
    return {k: v for k, v in entry.items() if k != "traffic"}


@dataclass
class _Build:
    generation: int
    quiet: bool = False
    process: ProcessHandle | None = None
    task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.process is not None:
            self.process.kill()


class DeclarativeConfig:
    """The latest config document and the builds that bring the instance to it."""

    def __init__(self, controller: Controller, base_dir: Path, cache_dir: Path | None) -> None:
        self.controller = controller
        self.base_dir = base_dir
        self.cache_dir = cache_dir
        #: The latest accepted document, as validated (``None`` until one arrives).
        self.document: ServeDeploySchema | None = None
        #: Per application: the keys its config entry set (``deployed_app_config``).
        self.app_configs: dict[str, dict[str, Any]] = {}
        self._builds: dict[str, _Build] = {}
        self._generation = 0
        self._build_dir = controller.session.root / "builds"

    @property
    def target_capacity(self) -> float | None:
        return self.document.target_capacity if self.document is not None else None

    # ------------------------------------------------------------------ apply
    def apply(self, raw: Any, *, force: bool = False, merge: bool = False) -> ServeDeploySchema:
        """Validate ``raw`` and make it the goal. Raises ServeConfigError, changing nothing.

        ``force`` rebuilds every application (and replaces its replicas) even
        if its entry did not change. ``merge`` adds the document's applications
        to the current config (replacing those of the same name) instead of
        replacing the config: other applications are left alone.
        """
        from schooner.schema import (  # not at import: the head starts faster
            config_warnings_by_section,
            parse_config_document,
        )

        controller = self.controller
        doc = parse_config_document(raw)
        top_warnings, app_warnings = config_warnings_by_section(raw)
        for line in top_warnings:
            logger.warning("config: %s", line)
        names = {app.name for app in doc.applications}
        for app in doc.applications:
            existing = controller.apps.get(app.name)
            if existing is not None and existing.deleting:
                raise ServeConfigError(
                    f"Application '{app.name}' is still being deleted; send the config again "
                    "once it is gone (see `schooner status`)."
                )
            if app.route_prefix is None:
                continue
            for other in controller.apps.values():
                stays = other.name not in names and (merge or other.spec.source != "declarative")
                if stays and not other.deleting and other.spec.route_prefix == app.route_prefix:
                    raise ServeConfigError(
                        f"applications ('{app.name}').route_prefix: '{app.route_prefix}' is "
                        f"already used by application '{other.name}' ("
                        + (
                            "deployed with serve.run"
                            if other.spec.source != "declarative"
                            else "from an earlier config"
                        )
                        + "). Pick another route_prefix, or delete that application first."
                    )
        traffic = check_document_traffic(controller, doc, merge=merge)
        # Valid: from here on, change the goal.
        apply_instance_logging_config(controller, doc)
        if merge and self.document is not None:
            kept = [a for a in self.document.applications if a.name not in names]
            self.document = self.document.model_copy(
                update={"applications": [*kept, *doc.applications]}
            )
        else:
            self.document = doc
        missing = [] if merge else [a for a in controller.apps.values() if a.name not in names]
        for other in missing:
            if other.spec.source == "declarative":
                logger.info("application '%s' is not in the new config; deleting it", other.name)
                self._cancel_build(other.name)
                self.app_configs.pop(other.name, None)
                controller.delete_app(other.name)
        for index, app in enumerate(doc.applications):
            echo = app.model_dump(mode="json", exclude_unset=True)
            existing = controller.apps.get(app.name)
            unchanged = (
                existing is not None
                and _without_traffic(self.app_configs.get(app.name)) == _without_traffic(echo)
                and existing.build_error is None
                and existing.spec.source == "declarative"
            )
            self.app_configs[app.name] = echo
            # An unchanged entry is still rebuilt, quietly: its code may have changed.
            self._start_build(app, force, quiet=unchanged and not force)
            controller.apps[app.name].config_warnings = app_warnings[index]
            controller.apps[app.name].update_status()
        apply_document_traffic(controller, traffic)  # every app of the document exists now
        controller.wake()
        return doc

    def forget(self, name: str) -> None:
        """Application ``name`` was deleted by other means (``serve.delete``, ``DELETE``)."""
        self._cancel_build(name)
        self.app_configs.pop(name, None)
        if self.document is not None:
            self.document.applications = [a for a in self.document.applications if a.name != name]

    def restore(self, document: dict[str, Any], app_configs: dict[str, dict[str, Any]]) -> None:
        """Take back the document a previous head had accepted (after a head restart)."""
        from schooner.schema import parse_config_document

        self.document = parse_config_document(document)
        self.app_configs = dict(app_configs)
        apply_instance_logging_config(self.controller, self.document)

    def rebuild(self, name: str) -> None:
        """Build ``name``'s entry again (a head crash cut its build short)."""
        for app in self.document.applications if self.document is not None else []:
            if app.name == name:
                self._start_build(app, False, quiet=False)

    def close(self) -> None:
        for name in list(self._builds):
            self._cancel_build(name)

    # ----------------------------------------------------------------- builds
    def _cancel_build(self, name: str) -> None:
        build = self._builds.pop(name, None)
        if build is not None:
            build.cancel()

    def _start_build(self, app: ServeApplicationSchema, force: bool, *, quiet: bool) -> None:
        """Build ``app`` in a builder process. ``quiet``: the entry did not change, so the
        status stays as it is and the result is deployed only if the code changed."""
        self._cancel_build(app.name)
        self._generation += 1
        build = _Build(self._generation, quiet=quiet)
        self._builds[app.name] = build
        if not quiet:
            self.controller.begin_build(app.name, app.route_prefix)
        request = BuildRequest(
            app=app.model_dump(mode="json", exclude_unset=True, exclude={"traffic"}),
            base_dir=str(self.base_dir),
            cache_dir=str(self.cache_dir) if self.cache_dir is not None else "",
            restart_nonce=secrets.token_hex(4) if force else "",
        )
        build.task = asyncio.get_running_loop().create_task(self._run_build(app.name, request))

    async def _run_build(self, name: str, request: BuildRequest) -> None:
        build = self._builds[name]
        self._build_dir.mkdir(mode=0o700, exist_ok=True)
        stem = self._build_dir / f"{build.generation}"
        request_file, result_file = Path(f"{stem}.request"), Path(f"{stem}.result")
        request_file.write_bytes(pickle.dumps(request, protocol=5))
        lifeline = self.controller.lifeline_fd
        try:
            build.process = self.controller.launcher.launch(
                ProcessSpec(
                    module="schooner.builder",
                    args=[
                        "--request",
                        str(request_file),
                        "--result",
                        str(result_file),
                        "--lifeline-fd",
                        str(lifeline),
                    ],
                    pass_fds=(lifeline,),
                )
            )
            logger.info("building application '%s' (pid %d)", name, build.process.pid)
            while (code := build.process.poll()) is None:
                await asyncio.sleep(_BUILD_POLL_S)
            result = self._read_result(name, result_file, code)
        finally:
            request_file.unlink(missing_ok=True)
            result_file.unlink(missing_ok=True)
        if self._builds.get(name) is not build:
            return  # superseded by a newer config or deleted meanwhile
        del self._builds[name]
        if build.quiet and result.spec is not None and self._same_as_running(result.spec):
            return
        if result.spec is None:
            logger.warning("%s", result.error)
            self.controller.build_failed(name, result.error or "the build failed")
            return
        try:
            self.controller.deploy_app(result.spec)
        except ServeConfigError as exc:
            self.controller.build_failed(name, f"Deploying app '{name}' failed: {exc}")
        logger.info("application '%s' built; deploying", name)

    def _same_as_running(self, spec: AppSpec) -> bool:
        app = self.controller.apps.get(spec.name)
        if app is None or app.deleting or app.spec.source != "declarative":
            return False
        return _fingerprint(app.spec) == _fingerprint(spec)

    @staticmethod
    def _read_result(name: str, path: Path, code: int) -> BuildResult:
        try:
            result: BuildResult = pickle.loads(path.read_bytes())
        except FileNotFoundError:
            return BuildResult(
                error=f"Deploying app '{name}' failed: the builder process exited with code "
                f"{code} before it finished (see the instance's logs)."
            )
        except Exception as exc:
            return BuildResult(error=f"Deploying app '{name}' failed: unreadable result: {exc!r}")
        return result
