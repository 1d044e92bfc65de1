"""runtime_env through the whole system: config → builder process → replica processes."""

from __future__ import annotations

import shutil
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from detached import EXAMPLES, Detached, fruit_config
from helpers import wait_for

APP_CODE = textwrap.dedent(
    """
    import os
    import schooner as serve

    @serve.deployment
    class Where:
        def __call__(self, request):
            import helper_mod
            return {
                "cwd": os.getcwd(),
                "color": os.environ.get("COLOR"),
                "shape": os.environ.get("SHAPE"),
                "helper": helper_mod.VALUE,
            }

    app = Where.bind()
    """
)


@pytest.fixture(scope="module")
def detached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    workdir = tmp_path_factory.mktemp("renv")
    shutil.copy(EXAMPLES / "fruit.py", workdir / "fruit.py")
    inst = Detached(workdir)
    inst.start()
    yield inst
    inst.stop()


def make_project(root: Path, helper_value: str) -> Path:
    """A code directory the instance does not have on its path."""
    project = root / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "where.py").write_text(APP_CODE)
    modules = root / "modules" / "helper_mod"
    modules.mkdir(parents=True, exist_ok=True)
    (modules / "__init__.py").write_text(f"VALUE = {helper_value!r}\n")
    return project


def app_entry(name: str, runtime_env: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": "where:app",
        "runtime_env": runtime_env,
        **extra,
    }


def test_working_dir_py_modules_and_env_vars(detached: Detached, tmp_path: Path) -> None:
    project = make_project(tmp_path, "from py_modules")
    env = {
        "working_dir": str(project),
        "py_modules": [str(tmp_path / "modules" / "helper_mod")],
        "env_vars": {"COLOR": "blue"},
    }
    per_dep = {"name": "Where", "ray_actor_options": {"runtime_env": {"env_vars": {"SHAPE": "sq"}}}}
    detached.deploy({"applications": [app_entry("local", env, deployments=[per_dep])]})
    detached.wait_running("local")
    answer = detached.http.get("/local").json()
    assert answer == {
        "cwd": str(project),
        "color": "blue",  # from the application's runtime_env
        "shape": "sq",  # merged in from the deployment's own runtime_env
        "helper": "from py_modules",
    }


def test_working_dir_zip_over_file_url(detached: Detached, tmp_path: Path) -> None:
    project = make_project(tmp_path, "zipped")
    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in project.rglob("*.py"):
            zf.write(path, f"project-main/{path.relative_to(project)}")
        zf.writestr("project-main/helper_mod/__init__.py", "VALUE = 'in the zip'\n")
    detached.deploy({"applications": [app_entry("zipped", {"working_dir": archive.as_uri()})]})
    detached.wait_running("zipped")
    answer = detached.http.get("/zipped").json()
    assert answer["helper"] == "in the zip"
    assert answer["cwd"].endswith("project-main") and str(tmp_path) not in answer["cwd"]


def test_invalid_runtime_env_fails_only_that_app(detached: Detached, tmp_path: Path) -> None:
    good = fruit_config()["applications"][0]
    bad = app_entry("broken", {"working_dir": str(tmp_path / "does-not-exist")})
    detached.deploy({"applications": [good, bad]})
    detached.wait_running("fruit")
    app = wait_for(
        lambda: (a := detached.app("broken")) and a["status"] == "DEPLOY_FAILED" and a,
        message="the bad app to fail",
    )
    assert "does-not-exist" in app["message"] and "working_dir" in app["message"]
    assert detached.http.post("/fruit", json=["MANGO", 1]).json() == 3
    unsupported = app_entry("conda", {"conda": {"dependencies": ["numpy"]}})
    detached.deploy({"applications": [good, unsupported]})
    app = wait_for(
        lambda: (a := detached.app("conda")) and a["status"] == "DEPLOY_FAILED" and a,
        message="the conda app to fail",
    )
    assert "conda" in app["message"] and "pip" in app["message"]
    assert detached.http.post("/fruit", json=["MANGO", 1]).json() == 3


def make_wheel(directory: Path, name: str, value: str) -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    wheel = directory / f"{name}-0.1-py3-none-any.whl"
    dist = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name}/__init__.py", f"VALUE = {value!r}\n")
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        zf.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


def test_pip_requirements_installed_once_for_the_app(detached: Detached, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "tinydep", "from pip")
    code = textwrap.dedent(
        """
        import schooner as serve

        @serve.deployment
        def uses_dep(request):
            import tinydep
            return tinydep.VALUE

        app = uses_dep.bind()
        """
    )
    (tmp_path / "pipapp.py").write_text(code)
    entry = {
        "name": "pipapp",
        "route_prefix": "/pipapp",
        "import_path": "pipapp:app",
        "runtime_env": {"working_dir": str(tmp_path), "pip": [str(wheel)]},
    }
    detached.deploy({"applications": [entry]})
    detached.wait_running("pipapp", timeout_s=180)
    assert detached.http.get("/pipapp").text == "from pip"
    # The instance's own environment does not have it.
    import importlib.util

    assert importlib.util.find_spec("tinydep") is None


def test_serve_run_applies_a_deployments_own_runtime_env(
    detached: Detached, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import os
        import schooner as serve

        @serve.deployment(ray_actor_options={"runtime_env": {"env_vars": {"COLOR": "red"}}})
        def color(request):
            return os.environ.get("COLOR", "unset")

        serve.run(color.bind(), name="colored", route_prefix="/colored")
        """
    )
    (tmp_path / "colored.py").write_text(script)
    import os
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "colored.py"],
        cwd=tmp_path,
        env={**os.environ, "SCHOONER_ADDRESS": detached.admin},
        check=True,
        timeout=60,
    )
    assert detached.http.get("/colored").text == "red"
    detached.api.delete("/api/serve/applications/")
