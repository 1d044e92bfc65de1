"""The CLI's argument handling (no instance started)."""

from __future__ import annotations

import pytest

from schooner.cli.main import build_parser, parse_resources
from schooner.exceptions import RayServeException
from schooner.importing import parse_kv_args


def test_run_flags_parse() -> None:
    args = build_parser().parse_args(
        ["run", "app:app", "k=v", "--port", "9001", "--num-cpus", "4", "--resources", '{"TPU": 2}']
    )
    assert (args.target, args.args, args.port, args.num_cpus) == (
        "app:app",
        ["k=v"],
        9001,
        4.0,
    )
    assert parse_resources(args.resources) == {"TPU": 2.0}


@pytest.mark.parametrize("text", ["{bad json", "[1, 2]", '{"TPU": -1}', '{"TPU": "two"}'])
def test_bad_resources_say_what_is_expected(text: str) -> None:
    with pytest.raises(RayServeException, match="--resources must be a JSON object"):
        parse_resources(text)


def test_builder_args_must_be_key_value() -> None:
    assert parse_kv_args(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError, match="key=value"):
        parse_kv_args(["novalue"])
