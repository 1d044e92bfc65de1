"""Every example in examples/ runs and answers as its docstring says."""

from __future__ import annotations

from pathlib import Path

import pytest

import schooner as serve
from schooner.importing import import_attr

EXAMPLES = Path(__file__).parents[2] / "examples"


def _example(name: str):
    return import_attr(f"{EXAMPLES / name}.py:app")


def test_fruit_stand_prices_through_user_config(clean) -> None:
    handle = serve.run(_example("fruit"), name="fruit", route_prefix="/fruit")
    assert clean.http.post("/fruit", json=["MANGO", 2]).json() == 6
    assert clean.http.post("/fruit", json=["ORANGE", 3]).json() == 6
    assert clean.http.post("/fruit", json=["PEAR", 1]).json() == 4
    assert clean.http.post("/fruit", json=["KIWI", 1]).json() == -1
    assert handle.check_price.remote("pear", 2).result() == 8
    deployments = serve.status().applications["fruit"].deployments
    assert deployments["FruitMarket"].replica_states == {"RUNNING": 2}
    assert len(deployments) == 4


@pytest.mark.both_backends
def test_fastapi_ingress_example(clean) -> None:
    serve.run(_example("fastapi_app"), name="inv", route_prefix="/inv")
    http = clean.http
    assert http.get("/inv").json() == {"service": "inventory", "items": 0}
    assert http.get("/inv/").json() == {"service": "inventory", "items": 0}
    r = http.get("/inv/items/3", params={"q": "x"})
    assert r.status_code == 200
    assert r.json() == {"item_id": 3, "q": "x", "found": False, "currency": "USD"}
    r = http.post("/inv/items", json={"name": "kite", "price": 9.5})
    assert r.status_code == 201
    assert r.json() == {"id": 1, "name": "kite", "price": 9.5}
    assert http.get("/inv/items/1").json()["found"] is True
    r = http.post("/inv/items", json={"name": "kite"})  # missing price
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "price"]
    r = http.get("/inv/items/not-a-number")
    assert r.status_code == 422
    r = http.delete("/inv/items/99")
    assert r.status_code == 404 and r.json() == {"detail": "no item 99"}
    assert http.get("/inv/openapi.json").json()["info"]["title"] == "Inventory"
    assert r.headers["x-request-id"]


def test_composition_example(clean) -> None:
    serve.run(_example("composition"), name="sentiment", route_prefix="/")
    r = clean.http.post("/", content=b"What a WONDERFUL day, I love it")
    assert r.json() == {"label": "positive", "score": 2, "words": 7}
    r = clean.http.post("/", content=b"awful")
    assert r.json()["label"] == "negative"


def test_examples_are_importable_by_path() -> None:
    paths = sorted(EXAMPLES.glob("*.py"))
    assert len(paths) >= 3
    for path in paths:
        assert isinstance(import_attr(f"{path}:app"), serve.Application), path
