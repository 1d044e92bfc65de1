"""Resolving a ``runtime_env`` into what a process needs: a directory, import paths, variables."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schooner.exceptions import RuntimeEnvSetupError
from schooner.runtime_env.pip import install_requirements
from schooner.runtime_env.py_modules import resolve_py_module
from schooner.runtime_env.spec import RAY_BACKEND_FIELDS, validate_runtime_env
from schooner.runtime_env.working_dir import resolve_working_dir


@dataclass(frozen=True)
class ResolvedRuntimeEnv:
    """A prepared environment, ready to apply to the process that imports the user's code.

    ``cwd`` is the working directory (None: leave it), ``sys_path`` the
    directories to put first on ``sys.path``, in order (working_dir,
    py_modules entries, pip target), ``env_vars`` the variables to set.
    """

    cwd: str | None = None
    sys_path: tuple[str, ...] = ()
    env_vars: dict[str, str] = field(default_factory=dict)
    #: On a Ray cluster: the fields Ray sets up itself (conda, uv, container, image_uri).
    ray_fields: dict[str, Any] = field(default_factory=dict)

    def apply_to_current_process(self) -> None:
        """Change directory, put ``sys_path`` first on ``sys.path``, set ``env_vars``.

        Modules imported before this call are not reloaded.
        """
        if self.cwd is not None:
            os.chdir(self.cwd)
        rest = [entry for entry in sys.path if entry not in self.sys_path]
        sys.path[:] = [*self.sys_path, *rest]
        os.environ.update(self.env_vars)
        importlib.invalidate_caches()


def resolve_runtime_env(
    env: Mapping[str, Any] | None,
    cache_dir: Path,
    *,
    base_dir: Path | None = None,
    python: str = sys.executable,
) -> ResolvedRuntimeEnv:
    """Validate ``env`` and set it up: fetch, unpack and install into ``cache_dir``.

    Blocking; each piece is built once per cache directory (concurrent
    callers, in threads or processes, wait for the one building it). Relative
    local paths are relative to ``base_dir`` (default: the current
    directory); ``python`` is the interpreter that will run the code, used
    for ``pip``. ``excludes`` and ``config`` are accepted and have no effect:
    local directories are used in place, nothing is packaged.

    Raises :class:`~schooner.exceptions.RuntimeEnvSetupError` naming the
    field and the cause (missing path, HTTP error, invalid zip, pip's output).
    """
    spec = validate_runtime_env(env)
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    cwd: str | None = None
    sys_path: list[str] = []
    try:
        if "working_dir" in spec:
            cwd = str(resolve_working_dir(spec["working_dir"], cache_dir, base))
            sys_path.append(cwd)
        for index, module in enumerate(spec.get("py_modules", ())):
            field_name = f"runtime_env.py_modules[{index}]"
            sys_path.append(str(resolve_py_module(module, cache_dir, base, field_name)))
        if "pip" in spec:
            target = install_requirements(spec["pip"], cache_dir, base, python)
            if target is not None:
                sys_path.append(str(target))
    except OSError as exc:
        raise RuntimeEnvSetupError(
            f"runtime_env: setting up failed: {exc}. Check that the cache directory "
            f"{str(cache_dir)!r} is writable and the disk is not full."
        ) from exc
    return ResolvedRuntimeEnv(
        cwd=cwd,
        sys_path=tuple(dict.fromkeys(sys_path)),
        env_vars=dict(spec.get("env_vars", {})),
        ray_fields={k: spec[k] for k in RAY_BACKEND_FIELDS if k in spec},
    )
