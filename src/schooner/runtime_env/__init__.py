"""``runtime_env``: the files, packages and variables a deployment's code runs with.

As in Ray Serve, an application's ``runtime_env`` applies to all its
deployments, and a deployment's ``ray_actor_options["runtime_env"]``
overrides it field by field (:func:`merge_runtime_envs`).
:func:`validate_runtime_env` checks a document where it is given;
:func:`resolve_runtime_env` does the setup (downloads, unpacking, ``pip
install``) into a cache directory, once per distinct input, and returns a
:class:`ResolvedRuntimeEnv` for the process that imports the user's code.

Supported fields: ``working_dir``, ``py_modules``, ``env_vars``, ``pip``,
``excludes`` and ``config`` (the last two accepted without effect). Ray's
other fields (``conda``, ``container``, ``uv``, ...) are rejected.
"""

from __future__ import annotations

from schooner.runtime_env.cache import default_cache_dir
from schooner.runtime_env.resolve import ResolvedRuntimeEnv, resolve_runtime_env
from schooner.runtime_env.spec import (
    SUPPORTED_FIELDS,
    merge_runtime_envs,
    validate_runtime_env,
)

__all__ = [
    "SUPPORTED_FIELDS",
    "ResolvedRuntimeEnv",
    "default_cache_dir",
    "merge_runtime_envs",
    "resolve_runtime_env",
    "validate_runtime_env",
]
