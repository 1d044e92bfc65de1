"""GPU ids: replicas see the devices of the CUDA_VISIBLE_DEVICES the instance was started
with (no GPU hardware needed: the ids are only handed out, not used)."""

from __future__ import annotations

import os

import pytest
from helpers import free_port, wait_until_no_processes

import schooner as serve
from schooner.exceptions import RayServeException


@serve.deployment
class Visible:
    def __call__(self) -> str:
        return os.environ["CUDA_VISIBLE_DEVICES"]


def test_replicas_get_the_parents_gpu_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        gpu = {"num_gpus": 1, "num_cpus": 0}
        first = serve.run(
            Visible.options(ray_actor_options=gpu).bind(), name="a", route_prefix="/a"
        )
        second = serve.run(
            Visible.options(name="Second", ray_actor_options=gpu).bind(),
            name="b",
            route_prefix="/b",
        )
        none = serve.run(
            Visible.options(name="NoGPU", ray_actor_options={"num_cpus": 0}).bind(),
            name="c",
            route_prefix="/c",
        )
        seen = {first.remote().result(timeout_s=30), second.remote().result(timeout_s=30)}
        assert seen == {"3", "5"}  # the parent's ids, not "0" and "1"
        assert none.remote().result(timeout_s=30) == ""  # no GPU asked for: none visible
    finally:
        serve.shutdown()


def test_more_gpus_than_cuda_visible_devices_lists_fails_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(RayServeException, match="num_gpus is 4, but CUDA_VISIBLE_DEVICES='3,5'"):
        serve.start(http_options={"port": free_port()}, num_gpus=4)
    assert not wait_until_no_processes(5.0)
