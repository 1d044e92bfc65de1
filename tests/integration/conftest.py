from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import free_port

import schooner as serve


class Instance:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    """One instance per test module; applications are deleted after each test."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    inst = Instance(port)
    yield inst
    inst.http.close()
    serve.shutdown()


@pytest.fixture
def clean(instance: Instance) -> Iterator[Instance]:
    yield instance
    for name in list(serve.status().applications):
        serve.delete(name)
