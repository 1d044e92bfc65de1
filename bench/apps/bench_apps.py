"""The applications the scenarios serve, written once for Schooner and for Ray Serve.

``BENCH_SERVE=ray`` in the environment selects ``ray.serve``; anything else
selects ``schooner``. The module sits alone in its folder so that either
system can import it by name (the folder is put on ``PYTHONPATH``, which Ray's
worker processes inherit). Every deployment keeps the default options (one
replica) except ``max_ongoing_requests``, which ``BENCH_MAX_ONGOING`` sets
when given (the suite's ``--max-ongoing``); unset, it is the default (5).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

if os.environ.get("BENCH_SERVE") == "ray":
    from ray import serve
else:
    import schooner as serve

_max_ongoing = os.environ.get("BENCH_MAX_ONGOING")
OPTIONS: dict[str, Any] = {"max_ongoing_requests": int(_max_ongoing)} if _max_ongoing else {}


@serve.deployment(**OPTIONS)
class Hello:
    """HTTP hello world: a sync ``__call__`` returning a string."""

    def __call__(self, request: Request) -> str:
        return "hello"


@serve.deployment(**OPTIONS)
class Model:
    """The second stage of the chain, called through a handle."""

    def __call__(self, text: str) -> str:
        return "hello"


@serve.deployment(**OPTIONS)
class Ingress:
    """The first stage of the chain: answers HTTP by asking ``Model``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    async def __call__(self, request: Request) -> str:
        result: str = await self.model.remote("x")
        return result


@serve.deployment(**OPTIONS)
class Echo:
    """Echoes an HTTP request body, or (``echo``) any value sent through a handle."""

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        return Response(body, media_type="application/octet-stream")

    def echo(self, value: Any) -> Any:
        return value


hello = Hello.bind()
chain = Ingress.bind(Model.bind())
echo = Echo.bind()


#: The ``multiplex`` scenario: how long loading a model takes, and the models' slots.
MODEL_LOAD_S = 0.05
MODELS_PER_REPLICA = 2


@serve.deployment(num_replicas=3, **OPTIONS)
class Multiplexed:
    """Answers with the model a request names (``serve_multiplexed_model_id`` header),
    loading it first if needed (``MODEL_LOAD_S`` of ``asyncio.sleep``). ``GET /stats``
    answers ``<replica id> <models loaded so far>`` instead; a request with no model id
    answers ``ok`` (readiness)."""

    def __init__(self) -> None:
        self.loads = 0

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> str:
        self.loads += 1
        await asyncio.sleep(MODEL_LOAD_S)
        return model_id

    async def __call__(self, request: Request) -> str:
        if request.url.path.endswith("/stats"):
            replica_id = serve.get_replica_context().replica_id.unique_id
            return f"{replica_id} {self.loads}"
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            return "ok"
        model: str = await self.get_model(model_id)
        return model


multiplex = Multiplexed.bind()
