"""Config files and targets for ``schooner deploy``/``run``, and the argument parser.

Files live in ``tmp_path``; nothing talks to an instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schooner.cli.config_cmds import (
    absolutize_local_paths,
    config_from_target,
    is_config_file,
    load_config_file,
)
from schooner.cli.main import build_parser
from schooner.exceptions import ServeConfigError


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- load_config_file ------------------------------------------------------------------------


def test_load_good_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "serve.yaml",
        "applications:\n  - name: a\n    import_path: mod:app\n    args:\n      size: 3\n",
    )
    assert load_config_file(path) == {
        "applications": [{"name": "a", "import_path": "mod:app", "args": {"size": 3}}]
    }


def test_load_json(tmp_path: Path) -> None:
    path = write(tmp_path / "serve.json", '{"import_path": "mod:app"}')
    assert load_config_file(path) == {"import_path": "mod:app"}


def test_yaml_syntax_error_says_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "applications:\n  - name: a: b\n")
    with pytest.raises(ServeConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert "is not valid YAML at line 2, column 12" in message
    assert "mapping values are not allowed here" in message
    assert "bad.yaml" in message


def test_unclosed_bracket_points_past_the_end(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "applications:\n  - import_path: [oops\n")
    with pytest.raises(ServeConfigError, match=r"at line 3, column 1: expected ','"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("", "NoneType")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write(tmp_path / "serve.yaml", text)
    with pytest.raises(ServeConfigError, match=f"must hold a mapping .* not {kind}"):
        load_config_file(path)


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.yaml")
    with pytest.raises(ServeConfigError) as info:
        load_config_file(missing)
    assert str(info.value) == f"Cannot read config file {missing!r}: No such file or directory."


# -- is_config_file --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["serve.yaml", "serve.yml", "serve.json", "dir/x.yaml"])
def test_config_file_by_suffix_even_if_missing(name: str) -> None:
    assert is_config_file(name)


@pytest.mark.parametrize("target", ["mod:app", "pkg.mod:app", "app.py:app", "pkg.mod.app"])
def test_import_paths_are_not_config_files(target: str) -> None:
    assert not is_config_file(target)


def test_existing_file_without_suffix_is_a_config_file(tmp_path: Path) -> None:
    plain = write(tmp_path / "serveconfig", "import_path: mod:app\n")
    script = write(tmp_path / "app.py", "app = None\n")
    assert is_config_file(plain)
    assert not is_config_file(script)


# -- absolutize_local_paths ------------------------------------------------------------------


def test_relative_paths_become_absolute_against_base(tmp_path: Path) -> None:
    doc = {
        "applications": [
            {
                "import_path": "mod:app",
                "runtime_env": {
                    "working_dir": "code",
                    "py_modules": ["libs/one", "s3://bucket/two.zip", "/opt/three", 4],
                    "env_vars": {"A": "1"},
                },
            },
            {"name": "b", "import_path": "mod:b", "route_prefix": "/b"},
        ]
    }
    out = absolutize_local_paths(doc, tmp_path)
    env = out["applications"][0]["runtime_env"]
    assert env["working_dir"] == str((tmp_path / "code").resolve())
    assert env["py_modules"] == [
        str((tmp_path / "libs/one").resolve()),
        "s3://bucket/two.zip",
        "/opt/three",
        4,
    ]
    assert env["env_vars"] == {"A": "1"}
    assert out["applications"][1] == {"name": "b", "import_path": "mod:b", "route_prefix": "/b"}
    # The input is not modified.
    assert doc["applications"][0]["runtime_env"]["working_dir"] == "code"


@pytest.mark.parametrize(
    "working_dir", ["https://example.com/code.zip", "gs://bucket/code.zip", "/srv/code"]
)
def test_urls_and_absolute_paths_are_untouched(tmp_path: Path, working_dir: str) -> None:
    doc = {"applications": [{"import_path": "m:a", "runtime_env": {"working_dir": working_dir}}]}
    out = absolutize_local_paths(doc, tmp_path)
    assert out["applications"][0]["runtime_env"]["working_dir"] == working_dir


def test_single_app_form(tmp_path: Path) -> None:
    doc = {"import_path": "mod:app", "runtime_env": {"working_dir": "./here", "py_modules": ["m"]}}
    out = absolutize_local_paths(doc, tmp_path)
    assert out["runtime_env"] == {
        "working_dir": str((tmp_path / "here").resolve()),
        "py_modules": [str((tmp_path / "m").resolve())],
    }
    assert doc["runtime_env"]["working_dir"] == "./here"


# -- config_from_target ----------------------------------------------------------------------


def test_import_path_becomes_one_app_document(tmp_path: Path) -> None:
    assert config_from_target("mod:app", {}, tmp_path) == {
        "applications": [{"import_path": "mod:app"}]
    }
    assert config_from_target("mod:app", {"size": "3"}, tmp_path) == {
        "applications": [{"import_path": "mod:app", "args": {"size": "3"}}]
    }


def test_kv_args_merge_into_the_one_app_of_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "serve.yaml",
        "applications:\n"
        "  - name: a\n"
        "    import_path: mod:app\n"
        "    args: {size: 1, color: red}\n"
        "    runtime_env: {working_dir: code}\n",
    )
    doc = config_from_target(path, {"size": "2", "new": "x"}, tmp_path)
    (app,) = doc["applications"]
    assert app["args"] == {"size": "2", "color": "red", "new": "x"}
    assert app["runtime_env"]["working_dir"] == str((tmp_path / "code").resolve())


def test_kv_args_merge_into_a_single_app_form_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "serve.yaml", "import_path: mod:app\nruntime_env: {}\nargs: {size: 1}\n"
    )
    doc = config_from_target(path, {"size": "2"}, tmp_path)
    assert doc["args"] == {"size": "2"}


def test_file_without_kv_args_is_returned_as_is(tmp_path: Path) -> None:
    path = write(tmp_path / "serve.yaml", "applications:\n  - import_path: mod:app\n")
    assert config_from_target(path, {}, tmp_path) == {"applications": [{"import_path": "mod:app"}]}


def test_kv_args_with_two_apps_say_to_use_args(tmp_path: Path) -> None:
    path = write(
        tmp_path / "serve.yaml",
        "applications:\n"
        "  - {name: a, import_path: mod:a, route_prefix: /a}\n"
        "  - {name: b, import_path: mod:b, route_prefix: /b}\n",
    )
    with pytest.raises(ServeConfigError) as info:
        config_from_target(path, {"k": "v"}, tmp_path)
    assert "the config has 2 applications" in str(info.value)
    assert "'args:'" in str(info.value)


def test_invalid_document_names_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "serve.yaml",
        "applications:\n  - name: a\n    import_path: mod:app\n    route_prefix: nope\n",
    )
    with pytest.raises(ServeConfigError, match=r"applications\[0\] \('a'\)\.route_prefix"):
        config_from_target(path, {}, tmp_path)


def test_invalid_import_path_target_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match=r"applications\[0\]\.import_path"):
        config_from_target("noattribute", {}, tmp_path)


def test_config_file_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="Cannot read config file"):
        config_from_target(str(tmp_path / "gone.yaml"), {}, tmp_path)


def test_single_app_file_without_runtime_env_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "serve.yaml", "import_path: mod:app\n")
    doc = config_from_target(path, {}, tmp_path)
    assert doc["import_path"] == "mod:app"


def test_kv_args_merge_into_an_empty_args_key(tmp_path: Path) -> None:
    path = write(tmp_path / "serve.yaml", "applications:\n  - import_path: mod:app\n    args:\n")
    doc = config_from_target(path, {"k": "v"}, tmp_path)
    assert doc["applications"][0]["args"] == {"k": "v"}


# -- the argument parser ---------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def test_run_flags() -> None:
    args = parse(
        "run", "serve.yaml", "--reload", "--admin-port", "-1", "-a", "http://h:1", "-d", "src"
    )
    assert args.command == "run"
    assert (args.target, args.reload, args.admin_port, args.address, args.app_dir) == (
        "serve.yaml",
        True,
        -1,
        "http://h:1",
        "src",
    )


def test_run_defaults() -> None:
    args = parse("run", "mod:app")
    assert (args.reload, args.admin_port, args.address, args.host, args.port) == (
        False,
        None,
        None,
        "127.0.0.1",
        8000,
    )
    assert (args.name, args.route_prefix, args.args) == ("default", "/", [])


def test_start_flags() -> None:
    args = parse(
        "start", "--http-port", "9000", "--admin-port", "9265", "--proxy-location", "HeadOnly"
    )
    assert (args.http_port, args.admin_port, args.proxy_location) == (9000, 9265, "HeadOnly")
    defaults = parse("start")
    assert (defaults.http_port, defaults.admin_port, defaults.proxy_location) == (
        8000,
        8265,
        "EveryNode",
    )


def test_start_rejects_an_unknown_proxy_location(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("start", "--proxy-location", "Nowhere")
    assert "invalid choice: 'Nowhere'" in capsys.readouterr().err


def test_shutdown_flags() -> None:
    assert parse("shutdown", "-y").yes is True
    assert parse("shutdown", "--yes", "--address", "h:1").address == "h:1"
    assert parse("shutdown").yes is False


def test_build_flags() -> None:
    args = parse("build", "a:app", "b:app", "-o", "out.yaml")
    assert (args.import_paths, args.output, args.app_dir) == (["a:app", "b:app"], "out.yaml", ".")
    assert parse("build", "a:app").output is None


def test_build_needs_an_import_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("build")
    assert "IMPORT_PATH" in capsys.readouterr().err


def test_deploy_flags() -> None:
    args = parse("deploy", "mod:app", "size=3", "color=red", "-a", "http://h:2")
    assert (args.config_or_import_path, args.args, args.address) == (
        "mod:app",
        ["size=3", "color=red"],
        "http://h:2",
    )


@pytest.mark.parametrize("command", ["config", "status"])
def test_config_and_status_flags(command: str) -> None:
    assert parse(command, "-n", "app1").name == "app1"
    assert parse(command, "--name", "app2", "-a", "h:3").address == "h:3"
    assert parse(command).name is None


def test_each_subcommand_has_its_handler() -> None:
    from schooner.cli import config_cmds, instance, run
    from schooner.cli.main import resolve_handler

    handlers = {
        "run": run.cmd_run,
        "start": instance.cmd_start,
        "shutdown": instance.cmd_shutdown,
        "build": config_cmds.cmd_build,
        "deploy": config_cmds.cmd_deploy,
        "config": config_cmds.cmd_config,
        "status": config_cmds.cmd_status,
    }
    required = {"run": ["x:y"], "build": ["x:y"], "deploy": ["x:y"]}
    for command, handler in handlers.items():
        target = parse(command, *required.get(command, [])).handler
        assert resolve_handler(target) is handler


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse()
    assert "required" in capsys.readouterr().err
