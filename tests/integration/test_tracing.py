"""Tracing end to end: one trace follows an HTTP request from the caller's ``traceparent``
through the proxy, the ingress replica, a handle call to a second deployment, and a span
the user's code opens there; spans land in each process's JSON-lines file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, wait_for

import schooner as serve
from schooner import _core

pytest.importorskip("opentelemetry.sdk", reason="pip install 'schooner[tracing]'")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@serve.deployment
class Speller:
    def __call__(self, word: str) -> str:
        from opentelemetry import trace

        with trace.get_tracer("user-code").start_as_current_span("spell"):
            return "-".join(word)


@serve.deployment
class Front:
    def __init__(self, speller: Any) -> None:
        self.speller = speller

    async def __call__(self, request: Any) -> str:
        return str(await self.speller.remote(request.query_params["word"]))


@pytest.fixture
def traced() -> Iterator[dict[str, Any]]:
    if _core.get_core_or_none() is not None:
        serve.shutdown()
    port = free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        tracing_config={"enabled": True, "sampling_ratio": 1.0},
    )
    try:
        info = _core.get_core().call_controller_sync("instance_info")
        yield {**info, "url": f"http://127.0.0.1:{port}"}
    finally:
        serve.shutdown()


def _spans(logs: Path) -> list[dict[str, Any]]:
    spans = []
    for path in sorted((logs / "tracing").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            spans.append(json.loads(line))
    return spans


def test_one_trace_through_proxy_replicas_and_user_code(traced: dict[str, Any]) -> None:
    serve.run(Front.bind(Speller.bind()), name="spelling", route_prefix="/spell")
    response = httpx.get(
        traced["url"] + "/spell",
        params={"word": "abc"},
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )
    assert response.text == "a-b-c"
    logs = Path(traced["session"]) / "logs"
    names = {"proxy_http_request", "replica_handle_request", "spell"}
    found: list[dict[str, Any]] = []

    def exported() -> bool:
        found[:] = [s for s in _spans(logs) if s["context"]["trace_id"] == "0x" + TRACE_ID]
        return sorted(s["name"] for s in found) == sorted([*names, "replica_handle_request"])

    wait_for(exported, timeout_s=30, message="the request's four spans to be exported")
    by_id = {s["context"]["span_id"]: s for s in found}
    proxy = next(s for s in found if s["name"] == "proxy_http_request")
    assert proxy["parent_id"] == "0x" + CALLER_SPAN
    assert proxy["attributes"]["http.status_code"] == 200
    replicas = [s for s in found if s["name"] == "replica_handle_request"]
    front = next(s for s in replicas if s["attributes"]["schooner.deployment"] == "Front")
    speller = next(s for s in replicas if s["attributes"]["schooner.deployment"] == "Speller")
    assert by_id[front["parent_id"]] is proxy
    assert by_id[speller["parent_id"]] is front
    user = next(s for s in found if s["name"] == "spell")
    assert by_id[user["parent_id"]] is speller
    assert front["attributes"]["schooner.request_id"] == response.headers["x-request-id"]
