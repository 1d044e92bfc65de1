"""runtime_env: validation messages, merge, and setup with real files, sockets and pip."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schooner.exceptions import RayServeException, RuntimeEnvSetupError
from schooner.runtime_env import (
    SUPPORTED_FIELDS,
    ResolvedRuntimeEnv,
    default_cache_dir,
    merge_runtime_envs,
    resolve_runtime_env,
    validate_runtime_env,
)
from schooner.runtime_env.cache import MARKER

# -- helpers ----------------------------------------------------------------------------------


def invalid(env: Any, where: str = "runtime_env") -> str:
    with pytest.raises(RuntimeEnvSetupError) as info:
        validate_runtime_env(env, where)
    return str(info.value)


def setup_error(env: dict[str, Any], cache_dir: Path, **kwargs: Any) -> str:
    with pytest.raises(RuntimeEnvSetupError) as info:
        resolve_runtime_env(env, cache_dir, **kwargs)
    return str(info.value)


def make_zip(path: Path, files: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def make_wheel(directory: Path, name: str, value: int) -> Path:
    """A minimal pure-Python wheel, built by hand: ``import name; name.X == value``."""
    dist_info = f"{name}-0.1.dist-info"
    files = {
        f"{name}/__init__.py": f"X = {value}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    return make_zip(directory / f"{name}-0.1-py3-none-any.whl", files)


def run_python(code: str, sys_path: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys_path)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )


@dataclass
class FileServer:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def file_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A real HTTP server on a free port, serving ``root`` and recording request paths."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "served"
    root.mkdir()
    served = FileServer(url="", root=root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield served
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def logged_python(tmp_path: Path) -> tuple[str, Path]:
    """An interpreter wrapper that logs its arguments, to count ``pip install`` runs."""
    log = tmp_path / "python-calls.log"
    script = tmp_path / "python-logged"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return str(script), log


def pip_installs(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(" pip install " in f" {line}" for line in log.read_text().splitlines())


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


# -- validation -------------------------------------------------------------------------------


def test_empty_and_none_validate_to_an_empty_dict() -> None:
    assert validate_runtime_env(None) == {}
    assert validate_runtime_env({}) == {}
    assert validate_runtime_env({"pip": None, "env_vars": None}) == {}


def test_not_a_mapping() -> None:
    message = invalid(["pip"])
    assert message.startswith("runtime_env must be a mapping")
    assert "working_dir" in message


@pytest.mark.parametrize(
    "name",
    ["conda", "container", "image_uri", "uv", "java_jars", "nsight", "worker_process_setup_hook"],
)
def test_ray_fields_schooner_does_not_support(name: str) -> None:
    message = invalid({name: "x"})
    assert message.startswith(f"runtime_env.{name}: Schooner does not support")
    assert "'pip'" in message and "'env_vars'" in message


def test_unknown_field_lists_the_supported_ones() -> None:
    message = invalid({"workdir": "."})
    assert "runtime_env.workdir: unknown runtime_env field 'workdir'" in message
    for name in SUPPORTED_FIELDS:
        assert name in message


def test_where_prefixes_the_field() -> None:
    message = invalid({"pip": 3}, where="applications[0].runtime_env")
    assert message.startswith("applications[0].runtime_env.pip must be a list")
    assert "requirements.txt" in message


def test_env_vars_values_must_be_strings() -> None:
    message = invalid({"env_vars": {"A": "1", "PORT": 8000}})
    assert message.startswith("runtime_env.env_vars.PORT must be a string, got int 8000")
    assert "str()" in message
    assert invalid({"env_vars": ["A=1"]}).startswith("runtime_env.env_vars must be a mapping")


@pytest.mark.parametrize(
    "url",
    ["gs://bucket/app.zip", "s3://bucket/app.zip", "https://example.com/app", "ftp://h/app.zip"],
)
def test_working_dir_rejects_urls_other_than_zip_over_file_or_http(url: str) -> None:
    message = invalid({"working_dir": url})
    assert message.startswith(f"runtime_env.working_dir: unsupported URL {url!r}")
    assert ".zip" in message and "http(s)://" in message


def test_working_dir_forms_accepted() -> None:
    for value in [
        "app",
        "/abs/app",
        "local://app",
        "file:///tmp/app.zip",
        "https://github.com/o/r/archive/refs/heads/main.zip",
        "http://host/a.ZIP?token=1",
    ]:
        assert validate_runtime_env({"working_dir": value}) == {"working_dir": value}
    assert validate_runtime_env({"working_dir": Path("app")}) == {"working_dir": "app"}
    assert invalid({"working_dir": 3}).startswith("runtime_env.working_dir must be a string")
    assert "must not be empty" in invalid({"working_dir": ""})


def test_py_modules_is_a_list_of_paths_urls_or_modules() -> None:
    message = invalid({"py_modules": "mypkg"})
    assert message.startswith("runtime_env.py_modules must be a list")
    assert "['mypkg']" in message
    message = invalid({"py_modules": ["mypkg", "s3://bucket/m.zip"]})
    assert message.startswith("runtime_env.py_modules[1]: unsupported URL")
    ok = validate_runtime_env(
        {"py_modules": ["a", "m.py", "x.whl", Path("b"), "https://h/m.whl", pytest]}
    )
    assert ok["py_modules"][:5] == ["a", "m.py", "x.whl", "b", "https://h/m.whl"]
    assert ok["py_modules"][5] == os.path.dirname(pytest.__file__)


def test_pip_forms_normalize_to_a_dict() -> None:
    assert validate_runtime_env({"pip": ["requests==2.31", " numpy "]})["pip"] == {
        "packages": ["requests==2.31", "numpy"],
        "pip_check": False,
    }
    assert validate_runtime_env({"pip": "requirements.txt"})["pip"] == {
        "packages": "requirements.txt",
        "pip_check": False,
    }
    full = {"packages": ["a"], "pip_check": True, "pip_version": "==24.0"}
    assert validate_runtime_env({"pip": full})["pip"] == full


def test_pip_errors_name_the_entry() -> None:
    assert invalid({"pip": ["ok", 3]}).startswith("runtime_env.pip[1] must be a non-empty")
    message = invalid({"pip": {"packages": ["a"], "index": "x"}})
    assert message.startswith("runtime_env.pip: unknown key(s) 'index'")
    assert "packages, pip_check, pip_version" in message
    assert "'packages' is required" in invalid({"pip": {"pip_check": True}})
    assert invalid({"pip": {"packages": [], "pip_check": "yes"}}).startswith(
        "runtime_env.pip.pip_check must be true or false"
    )


def test_excludes_and_config() -> None:
    env = {"excludes": ["*.log"], "config": {"setup_timeout_seconds": 60}}
    assert validate_runtime_env(env) == env
    assert invalid({"excludes": "*.log"}).startswith("runtime_env.excludes must be a list")
    assert invalid({"config": 600}).startswith("runtime_env.config must be a mapping")


def test_validation_is_idempotent_and_the_error_pickles() -> None:
    env = validate_runtime_env(
        {"working_dir": "app", "pip": ["a"], "env_vars": {"A": "1"}, "py_modules": ["m"]}
    )
    assert validate_runtime_env(env) == env
    error = RuntimeEnvSetupError("runtime_env.pip: bad")
    assert isinstance(error, RayServeException)
    assert str(pickle.loads(pickle.dumps(error))) == "runtime_env.pip: bad"


# -- merge ------------------------------------------------------------------------------------


def test_merge_replaces_fields_and_merges_env_vars() -> None:
    parent = {"pip": ["requests"], "working_dir": "app", "env_vars": {"A": "a", "B": "b"}}
    child = {"pip": ["torch"], "env_vars": {"B": "new", "C": "c"}}
    merged = merge_runtime_envs(parent, child)
    assert merged == {
        "pip": ["torch"],
        "working_dir": "app",
        "env_vars": {"A": "a", "B": "new", "C": "c"},
    }
    assert parent["env_vars"] == {"A": "a", "B": "b"}  # inputs untouched
    merged["pip"].append("x")
    assert child["pip"] == ["torch"]


def test_merge_with_missing_sides() -> None:
    assert merge_runtime_envs(None, None) == {}
    assert merge_runtime_envs({"env_vars": {"A": "1"}}, None) == {"env_vars": {"A": "1"}}
    assert merge_runtime_envs(None, {"pip": ["x"]}) == {"pip": ["x"]}
    assert merge_runtime_envs({"pip": ["x"]}, {"env_vars": {"A": "1"}}) == {
        "pip": ["x"],
        "env_vars": {"A": "1"},
    }


# -- working_dir ------------------------------------------------------------------------------


def test_local_working_dir_is_used_in_place(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    cache = tmp_path / "cache"
    resolved = resolve_runtime_env({"working_dir": str(app)}, cache)
    assert resolved == ResolvedRuntimeEnv(cwd=str(app), sys_path=(str(app),), env_vars={})
    assert not cache.exists() or not any(cache.iterdir())  # nothing copied
    assert resolve_runtime_env({"working_dir": f"local://{app}"}, cache).cwd == str(app)


def test_relative_working_dir_is_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "project" / "app").mkdir(parents=True)
    resolved = resolve_runtime_env(
        {"working_dir": "app"}, tmp_path / "cache", base_dir=tmp_path / "project"
    )
    assert resolved.cwd == str(tmp_path / "project" / "app")


def test_missing_working_dir(tmp_path: Path) -> None:
    message = setup_error({"working_dir": "nope"}, tmp_path / "cache", base_dir=tmp_path)
    assert message.startswith("runtime_env.working_dir: directory 'nope' does not exist")
    assert str(tmp_path / "nope") in message


def test_zip_with_one_top_level_dir_is_unpacked_once(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "app.zip", {"repo-main/main.py": "v1", "repo-main/d/x": ""})
    cache = tmp_path / "cache"
    env = {"working_dir": archive.as_uri()}
    first = resolve_runtime_env(env, cache)
    assert first.cwd is not None and Path(first.cwd).name == "repo-main"
    assert (Path(first.cwd) / "main.py").read_text() == "v1"
    assert first.sys_path == (first.cwd,)
    marker = Path(first.cwd).parent.parent / MARKER
    stamp = marker.stat().st_mtime_ns
    assert resolve_runtime_env(env, cache) == first
    assert marker.stat().st_mtime_ns == stamp

    # A rewritten zip at the same URL is read again.
    make_zip(archive, {"repo-main/main.py": "v2, longer"})
    second = resolve_runtime_env(env, cache)
    assert second.cwd != first.cwd
    assert (Path(second.cwd or "") / "main.py").read_text() == "v2, longer"


def test_zip_with_several_top_level_entries(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "app.zip", {"main.py": "", "pkg/__init__.py": ""})
    resolved = resolve_runtime_env({"working_dir": str(archive)}, tmp_path / "cache")
    assert resolved.cwd is not None
    assert sorted(os.listdir(resolved.cwd)) == ["main.py", "pkg"]


def test_zip_over_http_is_downloaded_once(tmp_path: Path, file_server: FileServer) -> None:
    make_zip(file_server.root / "app.zip", {"app/serve.py": "hello"})
    env = {"working_dir": f"{file_server.url}/app.zip"}
    first = resolve_runtime_env(env, tmp_path / "cache")
    assert (Path(first.cwd or "") / "serve.py").read_text() == "hello"
    assert resolve_runtime_env(env, tmp_path / "cache") == first
    assert file_server.requests == ["/app.zip"]


def test_http_404(tmp_path: Path, file_server: FileServer) -> None:
    url = f"{file_server.url}/missing.zip"
    message = setup_error({"working_dir": url}, tmp_path / "cache")
    assert message.startswith(f"runtime_env.working_dir: downloading {url} failed: HTTP 404")
    assert not list((tmp_path / "cache" / "working_dir").glob(".tmp-*"))


def test_unreachable_host(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = setup_error({"working_dir": f"http://127.0.0.1:{port}/a.zip"}, tmp_path / "c")
    assert message.startswith("runtime_env.working_dir: could not reach")


def test_bad_zip(tmp_path: Path, file_server: FileServer) -> None:
    (tmp_path / "bad.zip").write_text("not a zip")
    (file_server.root / "page.zip").write_text("<html>login</html>")
    cache = tmp_path / "cache"
    message = setup_error({"working_dir": (tmp_path / "bad.zip").as_uri()}, cache)
    assert message.startswith("runtime_env.working_dir: ")
    assert "is not a valid zip file" in message and "zip -r" in message
    message = setup_error({"working_dir": f"{file_server.url}/page.zip"}, cache)
    assert "is not a valid zip file" in message and "URL points to the archive" in message
    assert sorted(p.suffix for p in (cache / "working_dir").iterdir()) == [".lock", ".lock"]


# -- py_modules, env_vars ---------------------------------------------------------------------


def test_py_modules_package_file_zip_and_wheel(tmp_path: Path, file_server: FileServer) -> None:
    libs = tmp_path / "libs"
    (libs / "mypkg").mkdir(parents=True)
    (libs / "mypkg" / "__init__.py").write_text("NAME = 'pkg'\n")
    (libs / "sibling.py").write_text("NAME = 'sibling'\n")
    (tmp_path / "single.py").write_text("NAME = 'single'\n")
    make_zip(file_server.root / "zipped.zip", {"zmod/__init__.py": "NAME = 'zip'\n"})
    wheel = make_wheel(tmp_path / "wheels", "wheelmod", 5)
    env = {"py_modules": ["libs/mypkg", "single.py", f"{file_server.url}/zipped.zip", str(wheel)]}
    resolved = resolve_runtime_env(env, tmp_path / "cache", base_dir=tmp_path)
    assert resolved.cwd is None and len(resolved.sys_path) == 4
    code = (
        "import importlib.util, mypkg, single, zmod, wheelmod;"
        "print(mypkg.NAME, single.NAME, zmod.NAME, wheelmod.X,"
        " importlib.util.find_spec('sibling'))"
    )
    done = run_python(code, resolved.sys_path)
    assert done.stdout.split() == ["pkg", "single", "zip", "5", "None"], done.stderr
    assert resolve_runtime_env(env, tmp_path / "cache", base_dir=tmp_path) == resolved
    assert file_server.requests == ["/zipped.zip"]


def test_py_modules_errors_name_the_entry(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    message = setup_error({"py_modules": ["missing"]}, tmp_path / "c", base_dir=tmp_path)
    assert message.startswith("runtime_env.py_modules[0]: 'missing' does not exist")
    message = setup_error({"py_modules": ["notes.txt"]}, tmp_path / "c", base_dir=tmp_path)
    assert "is a file but not a .py, .whl or .zip file" in message


def test_env_vars_and_apply_to_current_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCHOONER_RT_TEST", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "rt_probe_module.py").write_text("VALUE = 11\n")
    resolved = resolve_runtime_env(
        {"working_dir": "app", "env_vars": {"SCHOONER_RT_TEST": "on"}}, tmp_path / "cache"
    )
    assert resolved.env_vars == {"SCHOONER_RT_TEST": "on"}
    monkeypatch.chdir("/")
    monkeypatch.delitem(sys.modules, "rt_probe_module", raising=False)
    resolved.apply_to_current_process()
    assert os.getcwd() == str(app)
    assert sys.path[0] == str(app)
    assert os.environ["SCHOONER_RT_TEST"] == "on"
    import rt_probe_module  # type: ignore[import-not-found]

    assert rt_probe_module.VALUE == 11


def test_default_cache_dir_is_read_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert default_cache_dir() == Path("/x/cache/schooner/runtime_env")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert default_cache_dir() == Path("/home/someone/.cache/schooner/runtime_env")


# -- pip --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("offline_pip")
def test_pip_installs_once(tmp_path: Path, logged_python: tuple[str, Path]) -> None:
    python, log = logged_python
    wheel = make_wheel(tmp_path, "schooner_rt_probe", 42)
    env = {"pip": [str(wheel)], "working_dir": str(tmp_path)}
    cache = tmp_path / "cache"
    resolved = resolve_runtime_env(env, cache, python=python)
    target = Path(resolved.sys_path[-1])
    assert resolved.sys_path[0] == str(tmp_path) and target.name == "site"
    done = run_python("import schooner_rt_probe as m; print(m.X)", resolved.sys_path)
    assert done.stdout.strip() == "42", done.stderr
    assert pip_installs(log) == 1

    marker = target.parent / MARKER
    stamp = marker.stat().st_mtime_ns
    assert resolve_runtime_env(env, cache, python=python) == resolved
    assert pip_installs(log) == 1
    assert marker.stat().st_mtime_ns == stamp
    # The same requirements given as a requirements file are a different (file) key.
    (tmp_path / "requirements.txt").write_text(f"# pinned\n{wheel}\n")
    from_file = resolve_runtime_env({"pip": "requirements.txt"}, cache, base_dir=tmp_path)
    assert run_python("import schooner_rt_probe", from_file.sys_path).returncode == 0


@pytest.mark.usefixtures("offline_pip")
def test_pip_failure_carries_pips_output(tmp_path: Path) -> None:
    missing = tmp_path / "absent-0.1-py3-none-any.whl"
    message = setup_error({"pip": [str(missing)]}, tmp_path / "cache")
    assert message.startswith("runtime_env.pip: 'pip install' of")
    assert "failed (exit status" in message
    assert "pip's output (last lines):" in message
    assert "absent-0.1-py3-none-any.whl" in message.split("pip's output")[1]
    assert [p.suffix for p in (tmp_path / "cache" / "pip").iterdir()] == [".lock"]


def test_pip_requirements_file_missing(tmp_path: Path) -> None:
    message = setup_error({"pip": "reqs.txt"}, tmp_path / "cache", base_dir=tmp_path)
    assert message.startswith("runtime_env.pip: cannot read the requirements file 'reqs.txt'")


@pytest.mark.usefixtures("offline_pip")
def test_concurrent_resolvers_install_once(tmp_path: Path, logged_python: tuple[str, Path]) -> None:
    python, log = logged_python
    wheel = make_wheel(tmp_path, "schooner_rt_concurrent", 7)
    env = {"pip": {"packages": [str(wheel)], "pip_check": False}}
    barrier = threading.Barrier(2)
    results: list[ResolvedRuntimeEnv | BaseException] = []

    def resolve() -> None:
        barrier.wait()
        try:
            results.append(resolve_runtime_env(env, tmp_path / "cache", python=python))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1], results
    assert pip_installs(log) == 1
    assert isinstance(results[0], ResolvedRuntimeEnv)
    done = run_python("import schooner_rt_concurrent as m; print(m.X)", results[0].sys_path)
    assert done.stdout.strip() == "7", done.stderr


def test_on_a_ray_cluster_rays_own_fields_go_to_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from schooner.runtime_env import spec

    monkeypatch.setattr(spec, "_ray_backend", None)
    monkeypatch.delenv("SCHOONER_BACKEND", raising=False)
    env = {"conda": {"dependencies": ["numpy"]}, "env_vars": {"A": "1"}}
    with pytest.raises(RuntimeEnvSetupError, match="does not support the runtime_env field"):
        validate_runtime_env(env)
    monkeypatch.setenv("SCHOONER_BACKEND", "ray")  # as in the head of an instance on Ray
    resolved = resolve_runtime_env(env, tmp_path)
    assert resolved.ray_fields == {"conda": {"dependencies": ["numpy"]}}
    assert resolved.env_vars == {"A": "1"}
