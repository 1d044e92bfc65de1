"""``pip``: install a requirement set once into a cached target directory.

The install is ``python -m pip install --target <dir> -r <requirements>``;
the directory goes first on ``sys.path``. ``--target`` installs every
requirement and its dependencies there even if the interpreter already has
them, so the environment does not depend on what else is installed.

The cache key is the sorted requirement lines, the interpreter's version
and platform, and the size and modification time of each local file or
directory a line names. Requirements that name no exact version (``requests``)
are therefore resolved once and not upgraded later; pin versions, or change
the list, to get a new install. ``pip_check`` and ``pip_version`` are accepted
and ignored.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schooner.exceptions import RuntimeEnvSetupError
from schooner.runtime_env.cache import cache_key, ensure_entry

#: Longest a ``pip install`` may run (Ray's default ``setup_timeout_seconds``).
PIP_TIMEOUT_S = 600.0

_FIELD = "runtime_env.pip"
_OUTPUT_TAIL_LINES = 40

_INTERPRETER_PROBE = (
    "import platform, sys; print(sys.version, sys.implementation.cache_tag, platform.machine())"
)


def install_requirements(
    pip: Mapping[str, Any], cache_dir: Path, base_dir: Path, python: str
) -> Path | None:
    """Install the normalized ``pip`` field; return the directory to put on ``sys.path``.

    Returns None when there is nothing to install. Local paths in
    requirement lines are relative to ``base_dir``; a requirements file's
    path too, and ``-r`` lines inside it are relative to the file.
    """
    packages: list[str] | str = pip["packages"]
    if isinstance(packages, str):
        requirements_file = Path(os.path.abspath(base_dir / os.path.expanduser(packages)))
        try:
            text = requirements_file.read_text()
        except OSError as exc:
            raise RuntimeEnvSetupError(
                f"{_FIELD}: cannot read the requirements file {packages!r} "
                f"({str(requirements_file)!r}): {exc.strerror}."
            ) from exc
        stripped = (line.strip() for line in text.splitlines())
        lines = [line for line in stripped if line and not line.startswith("#")]
        identity = ["file", str(requirements_file)]
    else:
        requirements_file = None
        lines = list(packages)
        identity = ["list"]
    if not lines:
        return None
    key = cache_key(
        *identity,
        _interpreter_tag(python),
        *sorted(lines),
        *_local_file_stamps(lines, base_dir),
    )

    def build(tmp: Path) -> None:
        requirements = requirements_file
        if requirements is None:
            requirements = tmp / "requirements.txt"
            requirements.write_text("\n".join(lines) + "\n")
        target = tmp / "site"
        _run_pip(python, target, requirements, base_dir, lines)
        target.mkdir(exist_ok=True)

    entry = ensure_entry(cache_dir, "pip", key, build, source="\n".join(lines))
    return entry / "site"


def _run_pip(python: str, target: Path, requirements: Path, cwd: Path, lines: list[str]) -> None:
    command = [
        python,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--disable-pip-version-check",
        "--no-input",
        "-r",
        str(requirements),
    ]
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeEnvSetupError(
            f"{_FIELD}: 'pip install' of {lines} did not finish in {PIP_TIMEOUT_S:g} s."
            + _tail(exc.output if isinstance(exc.output, str) else "")
        ) from exc
    except OSError as exc:
        raise RuntimeEnvSetupError(
            f"{_FIELD}: cannot run the interpreter {python!r} to install {lines}: {exc}."
        ) from exc
    if done.returncode != 0:
        raise RuntimeEnvSetupError(
            f"{_FIELD}: 'pip install' of {lines} failed (exit status {done.returncode}). "
            "Check the requirement names, versions and paths." + _tail(done.stdout)
        )


def _tail(output: str) -> str:
    lines = output.rstrip().splitlines()[-_OUTPUT_TAIL_LINES:]
    return "\npip's output (last lines):\n" + "\n".join(lines) if lines else ""


def _interpreter_tag(python: str) -> str:
    """Version, ABI tag and machine of ``python``: what makes installed files reusable."""
    if python == sys.executable:
        return f"{sys.version} {sys.implementation.cache_tag} {platform.machine()}"
    try:
        done = subprocess.run(
            [python, "-c", _INTERPRETER_PROBE],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeEnvSetupError(
            f"{_FIELD}: cannot run the interpreter {python!r}: {exc}."
        ) from exc
    return done.stdout.strip()


def _local_file_stamps(lines: list[str], base_dir: Path) -> list[str]:
    """Size and modification time of each line that names an existing local path."""
    stamps = []
    for line in lines:
        path = base_dir / line
        try:
            stat = path.stat()
        except (OSError, ValueError):
            continue
        stamps.append(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return stamps
